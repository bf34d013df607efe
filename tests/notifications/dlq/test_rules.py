"""Triage rules: the defaults, matching by priority, fingerprints, and rules added later re-applied."""

import pytest

from notifications.dlq.models import DeadLetter, DlqAudit, TriageRule
from notifications.dlq.rules import (
    DEFAULT_RULES,
    CompiledRule,
    TriageFacts,
    categorise,
    compile_rules,
    fingerprint,
    normalise_message,
)
from notifications.dlq.support import recategorise_dead_letters
from tests.notifications.dlq.conftest import entry, store


class _Rule:
    def __init__(self, id, **kw):
        self.id, self.name, self.priority, self.enabled = id, kw.pop("name", f"r{id}"), kw.pop("priority", 100), True
        for f in ("channel", "provider", "error_classes", "cause_classes", "provider_codes", "message_pattern"):
            setattr(self, f, kw.pop(f, ""))
        self.category = kw.pop("category")


DEFAULTS = compile_rules(_Rule(i, **r) for i, r in enumerate(DEFAULT_RULES, 1))


@pytest.mark.parametrize(
    ("facts", "category"),
    [
        (TriageFacts("sms", "twilio", "invalid_contact", "invalid_contact", "21211"), "invalid_address"),
        (TriageFacts("email", "sendgrid", "permanent", "permanent", "http_400"), "invalid_payload"),
        (TriageFacts("events", "", "unknown_type", ""), "invalid_payload"),
        (TriageFacts("email", "sendgrid", "max_attempts", "config_error", "http_401"), "provider_auth"),
        (TriageFacts("push", "fcm", "permanent", "permanent", "", status=403), "provider_auth"),
        (TriageFacts("sms", "twilio", "max_attempts", "transient", "20503"), "provider_outage"),
        (TriageFacts("sms", "twilio", "max_age", "rate_limited", "20429"), "retries_exhausted"),
        (TriageFacts("sms", "twilio", "quantum_flux", "quantum_flux"), "unknown"),
    ],
)
def test_default_rules_categorise(facts, category):
    assert categorise(facts, DEFAULTS)[0] == category


def test_rules_first_match_by_priority_and_every_condition_must_hold():
    rules = compile_rules(
        [
            _Rule(1, priority=50, error_classes="permanent", category="invalid_payload"),
            _Rule(
                2,
                priority=10,
                error_classes="Permanent",
                provider="SendGrid",
                message_pattern=r"sender .* not verified",
                category="provider_auth",
            ),
            _Rule(3, priority=5, channel="push", provider_codes="UNREGISTERED, 404", category="invalid_address"),
        ]
    )
    sender = TriageFacts("email", "sendgrid", "permanent", message="The from address Sender X is NOT verified")
    assert categorise(sender, rules)[1].id == 2
    assert categorise(TriageFacts("email", "smtp", "permanent", message="sender x not verified"), rules)[1].id == 1
    assert categorise(TriageFacts("push", "fcm", "x", status=404), rules)[0] == "invalid_address"
    assert categorise(TriageFacts("sms", "twilio", "x", code="UNREGISTERED"), rules)[0] == "unknown"
    with pytest.raises(ValueError, match="regular expression"):
        compile_rules([_Rule(4, message_pattern="(", category="unknown")])


def test_fingerprint_groups_alike_failures_and_separates_different_ones():
    def facts(channel="sms", code="20503", message="timeout after 9 s to +4915199999999"):
        return TriageFacts(channel, "twilio", "max_attempts", "transient", code, message=message)

    a = facts(message="timeout after 10.2 s to +4915112345678")
    b = facts(message="Timeout after 9 s to +4915199999999")
    c = facts(code="20500")
    d = facts(channel="email", message="timeout after 9 s")
    assert fingerprint(a) == fingerprint(b)
    assert len({fingerprint(a), fingerprint(c), fingerprint(d)}) == 3
    assert normalise_message("user 3f2a9c1e-0b7d-4c61-9a55-0e2b7b1c9f00 at ada@example.com: https://x.io/a?b=1") == (
        "user <uuid> at <email>: <url>"
    )
    assert isinstance(DEFAULTS[0], CompiledRule)


def test_rules_added_later_are_reapplied_to_uncategorised_entries(db, support_client, support_user):
    stored = store(
        [entry(i, error_class="quantum_flux", cause="quantum_flux", code="", message="flux melted") for i in range(4)]
    )
    assert {s.category for s in stored} == {"unknown"}
    rule = TriageRule.objects.create(name="flux", priority=5, error_classes="quantum_flux", category="provider_outage")
    response = support_client.post(
        "/admin/dlq/triagerule/", {"action": "reapply_to_unknown", "_selected_action": [rule.pk]}
    )
    assert response.status_code == 302
    assert set(DeadLetter.objects.values_list("category", "rule_id")) == {("provider_outage", rule.pk)}
    assert not DeadLetter.objects.filter(page_pending=True).exists()
    assert DlqAudit.objects.get().action == "recategorise"
    assert recategorise_dead_letters() == {}, "nothing unknown is left"
