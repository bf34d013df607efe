"""What one send did: the closed set of outcomes and the result an adapter returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

#: Error bodies are kept for the DLQ and logs, but bounded: a provider's HTML error page is not data.
MAX_ERROR_TEXT = 500


class SendOutcome(StrEnum):
    """The closed set a provider answer maps onto (the worker decides retry / DLQ from it)."""

    SENT = "sent"
    RATE_LIMITED = "rate_limited"  # back off, not a failure; retry_after when the provider said
    TRANSIENT = "transient"  # 5xx, timeouts, connection errors: retry with jittered backoff
    PERMANENT = "permanent"  # payload or request rejected: DLQ at once
    INVALID_CONTACT = "invalid_contact"  # bad address / dead token: DLQ and mark the contact point invalid
    CONFIG_ERROR = "config_error"  # credentials, sender, project: page ops, pause the provider

    @property
    def retryable(self) -> bool:
        return self in (SendOutcome.RATE_LIMITED, SendOutcome.TRANSIENT)


@dataclass(slots=True)
class SendResult:
    """What one send did. ``invalid_tokens`` lists dead push tokens, also when other devices succeeded."""

    outcome: SendOutcome
    provider: str
    provider_message_id: str = ""
    status_code: int | None = None
    error_code: str = ""
    message: str = ""
    retry_after: float | None = None  # seconds
    invalid_tokens: list[str] = field(default_factory=list)
    #: The part of the provider a rate limit or failure concerns ("": the whole provider). A webhook
    #: endpoint's 429 pauses that endpoint only (`notifications.delivery.endpoint_backoff`).
    scope: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is SendOutcome.SENT

    @property
    def retryable(self) -> bool:
        return self.outcome.retryable

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (Kafka error headers, delivery log)."""
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        return data


def truncate(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Which failure wins when no device succeeded: the one that most changes what the worker does next.
_FAILURE_PRECEDENCE = (
    SendOutcome.CONFIG_ERROR,
    SendOutcome.RATE_LIMITED,
    SendOutcome.TRANSIENT,
    SendOutcome.PERMANENT,
    SendOutcome.INVALID_CONTACT,
)


def aggregate_device_results(provider: str, results: Sequence[tuple[str, SendResult]]) -> SendResult:
    """One result for a push fanned out to several device tokens (see :func:`combine_results`)."""
    marked = [
        replace(result, invalid_tokens=[token]) if result.outcome is SendOutcome.INVALID_CONTACT else result
        for token, result in results
    ]
    return combine_results(provider, marked)


def combine_results(provider: str, results: Sequence[SendResult]) -> SendResult:
    """One result for several partial sends of one message (devices, or push platforms).

    * any part accepted -> ``sent`` (ids joined by ``,``), dead tokens in ``invalid_tokens``;
    * every part dead -> ``invalid_contact`` with all their tokens;
    * otherwise the most consequential failure (config > rate limit > transient > permanent), the
      longest ``retry_after`` among retryable parts, and the dead tokens seen so far.
    """
    if not results:
        return SendResult(SendOutcome.PERMANENT, provider, error_code="no_devices", message="no device tokens")
    dead = list(dict.fromkeys(token for result in results for token in result.invalid_tokens))
    if len(results) == 1:
        return replace(results[0], invalid_tokens=dead)
    sent = [result for result in results if result.ok]
    counts: dict[str, int] = {}
    for result in results:
        counts[str(result.outcome)] = counts.get(str(result.outcome), 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    if sent:
        return SendResult(
            SendOutcome.SENT,
            provider,
            provider_message_id=",".join(r.provider_message_id for r in sent if r.provider_message_id),
            status_code=sent[0].status_code,
            message=f"{len(results)} parts: {summary}",
            invalid_tokens=dead,
        )
    for outcome in _FAILURE_PRECEDENCE:
        chosen = [r for r in results if r.outcome is outcome]
        if chosen:
            first = chosen[0]
            waits = [r.retry_after for r in results if r.retryable and r.retry_after is not None]
            return SendResult(
                outcome,
                provider,
                status_code=first.status_code,
                error_code=first.error_code,
                message=truncate(f"{len(results)} parts: {summary}; {first.message}"),
                retry_after=max(waits) if waits and outcome.retryable else None,
                invalid_tokens=dead,
            )
    raise AssertionError(f"unhandled outcomes in {results!r}")  # pragma: no cover
