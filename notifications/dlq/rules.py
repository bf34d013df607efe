"""The rule book: triage rules matched against a dead letter's facts, fingerprints, the default rules."""

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TriageFacts:
    """What rules look at. `error_class` is the DLQ's error-class header (why it was dead-lettered:
    invalid_contact, permanent, max_attempts, render_error, …); `cause_class` the class of the last
    error in the history (transient, config_error, …); `code` the provider's error code."""

    channel: str
    provider: str = ""
    error_class: str = ""
    cause_class: str = ""
    code: str = ""
    status: int | None = None
    message: str = ""


class RuleLike(Protocol):
    id: Any
    name: str
    priority: int
    enabled: bool
    channel: str
    provider: str
    error_classes: str
    cause_classes: str
    provider_codes: str
    message_pattern: str
    category: str


class InvalidRule(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class CompiledRule:
    id: Any
    name: str
    priority: int
    category: str
    channel: str = ""
    provider: str = ""
    error_classes: frozenset[str] = frozenset()
    cause_classes: frozenset[str] = frozenset()
    codes: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None

    def matches(self, facts: TriageFacts) -> bool:
        if self.channel and facts.channel != self.channel:
            return False
        if self.provider and facts.provider.lower() != self.provider:
            return False
        if self.error_classes and facts.error_class.lower() not in self.error_classes:
            return False
        if self.cause_classes and facts.cause_class.lower() not in self.cause_classes:
            return False
        if self.codes and facts.code.lower() not in self.codes and str(facts.status or "") not in self.codes:
            return False
        return not (self.pattern is not None and not self.pattern.search(facts.message))


def split_list(value: str) -> frozenset[str]:
    """'a, B ,c' → {'a', 'b', 'c'}."""
    return frozenset(part.strip().lower() for part in (value or "").split(",") if part.strip())


def compile_rule(rule: RuleLike) -> CompiledRule:
    pattern = None
    if rule.message_pattern:
        try:
            pattern = re.compile(rule.message_pattern, re.IGNORECASE)
        except re.error as exc:
            raise InvalidRule("message_pattern", f"not a valid regular expression: {exc}") from exc
    if not rule.category:
        raise InvalidRule("category", "a rule needs a category")
    return CompiledRule(
        id=rule.id,
        name=rule.name,
        priority=rule.priority,
        category=rule.category,
        channel=rule.channel or "",
        provider=(rule.provider or "").strip().lower(),
        error_classes=split_list(rule.error_classes),
        cause_classes=split_list(rule.cause_classes),
        codes=split_list(rule.provider_codes),
        pattern=pattern,
    )


def compile_rules(rules: Iterable[RuleLike]) -> list[CompiledRule]:
    """Enabled rules, in the order they are tried (priority, then id)."""
    compiled = [compile_rule(r) for r in rules if r.enabled]
    return sorted(compiled, key=lambda r: (r.priority, r.id if isinstance(r.id, int) else 0))


def categorise(facts: TriageFacts, rules: Sequence[CompiledRule]) -> tuple[str, CompiledRule | None]:
    """The category of the first matching rule, or `unknown` (and no rule)."""
    for rule in rules:
        if rule.matches(facts):
            return rule.category, rule
    return UNKNOWN, None


#: How often the triage consumer re-reads the rules (admin edits apply without a restart).
RULES_REFRESH_SECONDS = 5.0


class RuleBook:
    """The enabled triage rules, compiled, re-read every `refresh_seconds` (clock injectable).

    A rule that does not compile (a bad regex saved around the admin's validation) is skipped and
    logged, never allowed to stop the consumer."""

    def __init__(
        self,
        *,
        refresh_seconds: float = RULES_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        loader: Callable[[], Iterable[Any]] | None = None,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        self.loader = loader or _load_rule_rows
        self._rules: list[CompiledRule] = []
        self._loaded_at = float("-inf")

    def rules(self) -> list[CompiledRule]:
        if self.clock() - self._loaded_at >= self.refresh_seconds:
            self.refresh()
        return self._rules

    def refresh(self) -> None:
        compiled = []
        for row in self.loader():
            if not row.enabled:
                continue
            try:
                compiled.append(compile_rule(row))
            except InvalidRule as exc:
                log.error("triage rule skipped", extra={"rule": row.name, "error": str(exc)})
        self._rules = sorted(compiled, key=lambda r: (r.priority, r.id or 0))
        self._loaded_at = self.clock()


def _load_rule_rows() -> list[Any]:
    from notifications.dlq.models import TriageRule

    return list(TriageRule.objects.filter(enabled=True))


# --- fingerprints ------------------------------------------------------------------------------

#: Variable parts of error messages, replaced before hashing so that "timeout after 10.2 s for
#: +4915112345678" and "timeout after 9.8 s for +4915199999999" are the same failure.
_NORMALISE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+"), "<email>"),
    (re.compile(r"\bhttps?://\S+", re.I), "<url>"),
    (re.compile(r"\b[0-9a-f]{16,}\b", re.I), "<hex>"),
    (re.compile(r"\+?\d[\d.,:]*"), "<n>"),
    (re.compile(r"\s+"), " "),
)


def normalise_message(message: str, *, limit: int = 300) -> str:
    text = (message or "")[:2000].lower()
    for pattern, replacement in _NORMALISE:
        text = pattern.sub(replacement, text)
    return text.strip()[:limit]


def fingerprint(facts: TriageFacts) -> str:
    """A short hash of what makes failures alike: where (channel, provider), why (error and cause
    class, provider code) and the message with its variable parts removed. The category is left
    out on purpose: it may change when rules are re-applied, the fingerprint does not."""
    parts = (
        facts.channel,
        facts.provider.lower(),
        facts.error_class.lower(),
        facts.cause_class.lower(),
        facts.code.lower(),
        normalise_message(facts.message),
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:20]


# --- the rules every installation starts with (created when the table is empty) ----------------

DEFAULT_RULES: tuple[dict[str, Any], ...] = (
    {
        "name": "Provider rejected our credentials or configuration",
        "priority": 10,
        "cause_classes": "config_error",
        "category": "provider_auth",
        "description": "401/403, a wrong sender, project or key: every send of this provider fails until fixed.",
    },
    {
        "name": "HTTP 401/403 from the provider",
        "priority": 11,
        "provider_codes": "401, 403, http_401, http_403",
        "category": "provider_auth",
    },
    {
        "name": "Invalid address or dead device token",
        "priority": 20,
        "error_classes": "invalid_contact",
        "category": "invalid_address",
        "description": "The contact point was marked invalid; replay only after the user fixed it.",
    },
    {
        "name": "Payload rejected or malformed",
        "priority": 30,
        "error_classes": "permanent, invalid_message, invalid_json, invalid_event, unsupported_version, "
        "unknown_type, render_error",
        "category": "invalid_payload",
    },
    {
        "name": "Provider down for the whole retry budget",
        "priority": 40,
        "error_classes": "max_attempts, max_age",
        "cause_classes": "transient",
        "category": "provider_outage",
        "description": "5xx, timeouts or connection errors until attempts or age ran out: replay once it is back.",
    },
    {
        "name": "Retries exhausted",
        "priority": 50,
        "error_classes": "max_attempts, max_age",
        "category": "retries_exhausted",
    },
)
