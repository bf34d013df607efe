"""SIGKILL of each role mid-batch, restarted after a short pause as a supervisor would: nothing lost, nothing twice."""

import time

import pytest

from tests.faults.conftest import assert_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

#: A supervisor's restart delay.
PAUSE = 1.0
#: The issue's target for an urgent message after a worker SIGKILL + restart.
WORKER_RESTART_TARGET = 5.0


def kill_and_restart(role: str, *, campaign: bool = False, killed: list[float] | None = None):
    def fault(case):
        if campaign:
            case.launch_campaign()
            case.wait_for_sends(5, kind="campaign")
        if killed is not None:
            killed.append(time.time())
        case.pipeline.kill(role)
        time.sleep(PAUSE)
        case.pipeline.restart(role)

    return fault


def test_steady_load_without_a_fault_is_delivered_exactly_once(run_case):
    figures, _ = run_case("steady", lambda case: None)
    assert_exactly_once(figures)


@pytest.mark.parametrize("role", ["relay", "dispatcher", "dispatcher_bulk", "triage"])
def test_a_role_killed_mid_batch_and_restarted_loses_nothing_and_sends_nothing_twice(run_case, role):
    figures, _ = run_case(f"kill-{role}", kill_and_restart(role))
    assert_exactly_once(figures)


@pytest.mark.parametrize("role", ["orchestrator", "expander"])
def test_a_campaign_role_killed_mid_campaign_loses_nothing_and_sends_nothing_twice(run_case, role):
    figures, case = run_case(f"kill-{role}", kill_and_restart(role, campaign=True))
    assert_exactly_once(figures)
    case.assert_campaign_completed_after_its_last_send()


#: A send the provider accepted this long before a worker's SIGKILL may not have had its answer yet.
IN_FLIGHT_WINDOW = 1.0


def test_a_worker_killed_mid_batch_and_restarted_delays_urgent_mail_at_most_five_seconds(run_case):
    """Its claims are taken over as soon as it is gone (no lease to wait out). What the provider had
    accepted in the instant of the kill, before the worker heard back, is sent again: no dedup can
    know of a send whose answer never arrived. Every duplicate must be one of those: its first copy
    reached the sandbox within IN_FLIGHT_WINDOW before the kill, and it arrived exactly twice."""
    killed: list[float] = []
    figures, case = run_case("kill-worker", kill_and_restart("worker0", campaign=True, killed=killed))
    assert figures.accepted > 0 and figures.lost == 0, f"{figures.lost} accepted messages never arrived"
    unexplained = {
        key: arrivals
        for key, arrivals in figures.duplicate_sample.items()
        if len(arrivals) != 2 or not killed[0] - IN_FLIGHT_WINDOW <= arrivals[0][0] <= killed[0] + 0.1
    }
    assert not unexplained, f"duplicates not in flight at the kill ({killed[0]:.3f}): {unexplained}"
    case.assert_campaign_completed_after_its_last_send()
    assert figures.max_urgent_delay <= WORKER_RESTART_TARGET
