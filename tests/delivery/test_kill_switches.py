"""The worker's kill-switch decisions: the mode table, urgency, and provider switches with failover."""

import pytest

from notifications.delivery.circuit_breaker import CircuitBreaker
from notifications.delivery.kill_switches import (
    SwitchAction,
    SwitchStop,
    choose_provider,
    stopped_on,
    switch_action,
)
from notifications.delivery.provider_slots import ProviderSlot
from notifications.dispatch.screening import kill_switch_urgent


def slot(name: str, *, kind: str | None = None, enabled: bool = True, broken: bool = False) -> ProviderSlot:
    breaker = CircuitBreaker(f"provider:{name}", failure_threshold=1, cool_down_seconds=60)
    if broken:
        breaker.record_failure()
    return ProviderSlot(name=name, kind=kind or name, rate=10, burst=1, reserve=0, breaker=breaker, enabled=enabled)


NORMAL = {"id": "m1", "category": "transactional", "urgency": "normal", "priority": "transactional"}
URGENT = {"id": "m2", "category": "transactional", "urgency": "urgent", "priority": "urgent"}
BULK = {"id": "m3", "category": "marketing", "urgency": "bulk", "priority": "bulk"}


@pytest.mark.parametrize(
    ("mode", "not_urgent", "urgent"),
    [
        ("normal", SwitchAction.SEND, SwitchAction.SEND),
        (None, SwitchAction.SEND, SwitchAction.SEND),
        ("delay", SwitchAction.PARK, SwitchAction.SEND),
        ("drop_non_urgent", SwitchAction.DROP, SwitchAction.SEND),
        ("pause", SwitchAction.PARK, SwitchAction.PARK),
    ],
)
def test_the_decision_table(mode, not_urgent, urgent):
    assert switch_action(mode, urgent=False) == not_urgent
    assert switch_action(mode, urgent=True) == urgent


def test_urgent_means_the_urgent_class_an_urgent_type_or_the_security_category():
    assert kill_switch_urgent(URGENT)
    assert kill_switch_urgent({"category": "security", "urgency": "normal"}), "no priority field: classified"
    assert not kill_switch_urgent(NORMAL) and not kill_switch_urgent(BULK)


def choose(message, slots, *, channel="normal", providers=None, kind=None):
    modes = providers or {}
    return choose_provider(
        message, slots, channel_mode=channel, provider_mode=lambda n: modes.get(n, "normal"), kind=kind
    )


@pytest.mark.parametrize("mode", ["delay", "drop_non_urgent", "pause"])
def test_the_channel_switch_decides_before_any_provider(mode):
    result = choose(NORMAL, [slot("sendgrid")], channel=mode)
    expected = SwitchAction.DROP if mode == "drop_non_urgent" else SwitchAction.PARK
    assert result == SwitchStop(expected, mode, "")
    assert result.reason == ("kill_switch" if expected == SwitchAction.DROP else f"kill_switch_{mode}")


def test_an_urgent_message_passes_a_delayed_or_dropping_channel_but_not_a_paused_one():
    primary = slot("sendgrid")
    assert choose(URGENT, [primary], channel="delay") is primary
    assert choose(URGENT, [primary], channel="drop_non_urgent") is primary
    assert choose(URGENT, [primary], channel="pause") == SwitchStop(SwitchAction.PARK, "pause")


@pytest.mark.parametrize("mode", ["delay", "drop_non_urgent", "pause"])
def test_a_switched_provider_fails_over_to_the_next(mode):
    primary, secondary = slot("sendgrid"), slot("smtp")
    assert choose(NORMAL, [primary, secondary], providers={"sendgrid": mode}) is secondary


@pytest.mark.parametrize(
    ("mode", "action"),
    [("delay", SwitchAction.PARK), ("drop_non_urgent", SwitchAction.DROP), ("pause", SwitchAction.PARK)],
)
def test_with_no_provider_left_the_switch_of_the_skipped_provider_decides(mode, action):
    primary = slot("sendgrid")
    assert choose(NORMAL, [primary], providers={"sendgrid": mode}) == SwitchStop(action, mode, "sendgrid")
    broken = slot("smtp", broken=True)
    assert choose(NORMAL, [primary, broken], providers={"sendgrid": mode}) == SwitchStop(action, mode, "sendgrid")


def test_the_first_skipped_provider_decides_when_several_are_switched():
    slots = [slot("sendgrid"), slot("smtp")]
    result = choose(NORMAL, slots, providers={"sendgrid": "drop_non_urgent", "smtp": "pause"})
    assert result == SwitchStop(SwitchAction.DROP, "drop_non_urgent", "sendgrid")


def test_urgent_messages_pass_a_delayed_or_dropping_provider_and_skip_a_paused_one():
    primary, secondary = slot("sendgrid"), slot("smtp")
    assert choose(URGENT, [primary, secondary], providers={"sendgrid": "delay"}) is primary
    assert choose(URGENT, [primary, secondary], providers={"sendgrid": "drop_non_urgent"}) is primary
    assert choose(URGENT, [primary, secondary], providers={"sendgrid": "pause"}) is secondary


def test_a_switch_on_another_kind_or_a_disabled_provider_does_not_decide():
    fcm, apns = slot("fcm"), slot("apns")
    assert choose(NORMAL, [fcm, apns], providers={"fcm": "pause"}, kind="apns") is apns
    assert choose(NORMAL, [fcm, apns], providers={"apns": "pause"}, kind="fcm") is fcm
    disabled = slot("sendgrid", enabled=False)
    assert choose(NORMAL, [disabled], providers={"sendgrid": "pause"}) is None, "no provider: the usual retry"


def test_the_check_right_before_booking_sees_a_switch_pulled_meanwhile():
    primary = slot("sendgrid")
    assert not stopped_on(NORMAL, primary, channel_mode="normal", provider_mode="normal")
    assert stopped_on(NORMAL, primary, channel_mode="delay", provider_mode="normal")
    assert stopped_on(NORMAL, primary, channel_mode="normal", provider_mode="drop_non_urgent")
    assert not stopped_on(URGENT, primary, channel_mode="delay", provider_mode="drop_non_urgent")
    assert stopped_on(URGENT, primary, channel_mode="normal", provider_mode="pause")
