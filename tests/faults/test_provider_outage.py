"""The primary e-mail provider answers 5xx for a while: its breaker opens, the secondary (SMTP) takes the mail, and
the primary takes it back once it recovers; nothing lost, nothing twice."""

import time

import pytest

from tests.faults.conftest import assert_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

OUTAGE = 8.0  # s the primary answers 503 to everything
RECOVERY_TIMEOUT = 30.0  # the breaker's cool-down is 3 s in the suite


def test_a_provider_outage_fails_over_to_the_secondary_and_back_without_loss_or_duplicates(run_case, sandbox):
    primary, secondary = sandbox.client("sendgrid"), sandbox.client("smtp")

    def fault(case):
        before = secondary.stats()["accepted"]
        primary.configure(errors={"transient": 1.0})
        try:
            time.sleep(OUTAGE)
            failed_over = secondary.stats()["accepted"] - before
        finally:
            primary.configure(errors={"transient": 0.0})
        recovered_at = primary.stats()["accepted"]
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while primary.stats()["accepted"] == recovered_at and time.monotonic() < deadline:
            time.sleep(0.2)
        return failed_over, primary.stats()["accepted"] - recovered_at

    figures, case = run_case("provider-outage", fault)
    failed_over, after_recovery = case.outcome
    assert failed_over > 0, "the secondary provider took mail while the primary was down"
    assert after_recovery > 0, "the primary took mail again after it recovered"
    assert_exactly_once(figures)
