"""The provider error hierarchy, and the translation of provider and network exceptions into results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import httpx

from notifications.providers.results import SendOutcome, SendResult, truncate


class ProviderError(Exception):
    """A provider (or the network to it) refused a send; carries what the provider said.

    Subclasses fix the outcome. Adapters raise them ``from`` the library exception they translate;
    :meth:`ProviderAdapter.send` turns them into a :class:`SendResult`.
    """

    outcome: ClassVar[SendOutcome] = SendOutcome.PERMANENT

    def __init__(
        self,
        message: str = "",
        *,
        provider: str,
        status_code: int | None = None,
        error_code: str = "",
        response: Any = None,
        retry_after: float | None = None,
        invalid_tokens: Sequence[str] = (),
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.provider = provider
        self.status_code = status_code
        self.error_code = error_code
        self.response = response  # the raw response object or body (never printed in repr)
        self.retry_after = retry_after
        self.invalid_tokens = list(invalid_tokens)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, status_code={self.status_code!r}, "
            f"error_code={self.error_code!r}, message={str(self)!r})"
        )

    def to_result(self) -> SendResult:
        return SendResult(
            outcome=self.outcome,
            provider=self.provider,
            status_code=self.status_code,
            error_code=self.error_code,
            message=truncate(str(self)),
            retry_after=self.retry_after,
            invalid_tokens=list(self.invalid_tokens),
        )

    @staticmethod
    def from_result(result: SendResult, *, response: Any = None) -> ProviderError:
        """The exception matching a (non-sent) classified result, e.g. to raise it from a library error."""
        cls = _ERROR_FOR_OUTCOME.get(result.outcome, PermanentError)
        return cls(
            result.message,
            provider=result.provider,
            status_code=result.status_code,
            error_code=result.error_code,
            response=response,
            retry_after=result.retry_after,
            invalid_tokens=result.invalid_tokens,
        )


class RateLimitedError(ProviderError):
    outcome = SendOutcome.RATE_LIMITED


class TransientError(ProviderError):
    outcome = SendOutcome.TRANSIENT


class PermanentError(ProviderError):
    outcome = SendOutcome.PERMANENT


class InvalidMessageError(PermanentError):
    """The channel message itself cannot be sent (missing recipient or content): nothing was posted."""


class InvalidContactError(ProviderError):
    outcome = SendOutcome.INVALID_CONTACT


class ConfigurationError(ProviderError):
    outcome = SendOutcome.CONFIG_ERROR


_ERROR_FOR_OUTCOME: dict[SendOutcome, type[ProviderError]] = {
    SendOutcome.RATE_LIMITED: RateLimitedError,
    SendOutcome.TRANSIENT: TransientError,
    SendOutcome.PERMANENT: PermanentError,
    SendOutcome.INVALID_CONTACT: InvalidContactError,
    SendOutcome.CONFIG_ERROR: ConfigurationError,
}


def result_from_exception(provider: str, exc: BaseException) -> SendResult | None:
    """Translate provider/network exceptions; None for anything else (a bug: let it propagate)."""
    if isinstance(exc, ProviderError):
        return exc.to_result()
    if isinstance(exc, httpx.UnsupportedProtocol):
        return SendResult(SendOutcome.CONFIG_ERROR, provider, error_code="unsupported_protocol", message=str(exc))
    if isinstance(exc, httpx.LocalProtocolError):
        if "outbound streams" in str(exc):
            # h2's stream limit on our own connection (httpcore can miscount it after a cancelled
            # stream): nothing is wrong with the message, so it must be retried, never dead-lettered.
            return SendResult(SendOutcome.TRANSIENT, provider, error_code="stream_limit", message=truncate(str(exc)))
        return SendResult(SendOutcome.PERMANENT, provider, error_code="local_protocol_error", message=str(exc))
    if isinstance(exc, httpx.TimeoutException):
        code = "pool_timeout" if isinstance(exc, httpx.PoolTimeout) else "timeout"
        return SendResult(SendOutcome.TRANSIENT, provider, error_code=code, message=truncate(str(exc) or code))
    if isinstance(exc, httpx.ConnectError):
        return SendResult(SendOutcome.TRANSIENT, provider, error_code="connect_error", message=truncate(str(exc)))
    if isinstance(exc, httpx.RemoteProtocolError):
        return SendResult(SendOutcome.TRANSIENT, provider, error_code="protocol_error", message=truncate(str(exc)))
    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        return SendResult(
            SendOutcome.TRANSIENT, provider, error_code="network_error", message=truncate(str(exc) or repr(exc))
        )
    return None
