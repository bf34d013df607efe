"""PostgreSQL, Redis and Kafka each down for a few seconds under load: nothing lost, nothing twice, and an urgent
message waits at most the outage + 2 s."""

import pytest

from tests.faults.conftest import assert_exactly_once
from tests.faults.services import restart, sigkill_kafka

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DOWN = 4.0  # s each service stays down
SLACK = 2.0  # the target: urgent delay <= the outage + 2 s


def test_a_redis_restart_loses_nothing_and_holds_urgent_mail_no_longer_than_the_outage(run_case):
    figures, case = run_case("restart-redis", lambda case: restart("redis", down_for=DOWN))
    assert_exactly_once(figures)
    assert figures.max_urgent_delay <= case.outcome + SLACK, f"outage {case.outcome:.1f} s"


def test_a_postgresql_restart_loses_nothing_and_holds_urgent_mail_no_longer_than_the_outage(run_case):
    figures, case = run_case("restart-postgres", lambda case: restart("postgres", down_for=DOWN))
    assert_exactly_once(figures)
    assert figures.max_urgent_delay <= case.outcome + SLACK, f"outage {case.outcome:.1f} s"


def test_a_kafka_broker_sigkilled_and_restarted_loses_nothing_and_holds_urgent_mail_no_longer_than_the_outage(
    run_case,
):
    figures, case = run_case("sigkill-kafka", lambda case: sigkill_kafka(down_for=DOWN))
    assert_exactly_once(figures)
    assert figures.max_urgent_delay <= case.outcome + SLACK, f"outage {case.outcome:.1f} s"
