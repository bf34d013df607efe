"""A worker frozen past its session timeout loses its partitions to the other worker; resumed, the zombie must not
send what its successor sent."""

import time

import pytest
from django.conf import settings

from tests.faults.conftest import assert_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]


def test_a_worker_stopped_past_its_session_timeout_and_resumed_sends_nothing_its_successor_sent(run_case):
    frozen_for = settings.KAFKA_SESSION_TIMEOUT_MS / 1000 + 4

    def fault(case):
        case.pipeline.pause("worker0")
        time.sleep(frozen_for)
        case.pipeline.resume("worker0")
        return frozen_for

    figures, _ = run_case("sigstop-worker", fault)
    assert_exactly_once(figures)
