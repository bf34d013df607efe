"""The DLQ admin and who may do what: the Support group, replay, discard, filters, search, groups,
detail, replay by filter of 10,000 entries, the drain of parked messages."""

import time

import orjson
import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied

from notifications.bus.topics import channel_topic
from notifications.dlq.models import DeadLetter, DlqAudit
from notifications.dlq.signals import SUPPORT_GROUP, SUPPORT_PERMISSIONS
from notifications.dlq.support import discard_dead_letters, replay_dead_letters
from notifications.models import KillSwitch, OutboxEvent
from tests.kafka_helpers import consume_matching
from tests.notifications.dlq.conftest import channel_message, entry, staff_user, store


def test_support_group_has_sensible_permissions(db, django_user_model):
    group = Group.objects.get(name=SUPPORT_GROUP)
    granted = {
        f"{app_label}.{codename}"
        for app_label, codename in group.permissions.values_list("content_type__app_label", "codename")
    }
    assert granted == set(SUPPORT_PERMISSIONS)
    assert {"dlq.replay_deadletter", "dlq.discard_deadletter"} <= set(SUPPORT_PERMISSIONS)
    assert "dlq.change_deadletter" not in SUPPORT_PERMISSIONS and "dlq.delete_dlqaudit" not in SUPPORT_PERMISSIONS
    support = django_user_model.objects.create_user(username="s", is_staff=True)
    support.groups.add(group)
    assert support.has_perm("dlq.replay_deadletter") and support.has_perm("notifications.view_killswitch")


def test_the_old_admin_addresses_redirect_to_the_dlq_app(db, support_client):
    """Pages sent before the DLQ was its own app link to /admin/notifications/deadletter/…"""
    old = support_client.get("/admin/notifications/deadletter/", {"fingerprint": "abc"})
    assert old.status_code == 302 and old["Location"] == "/admin/dlq/deadletter/?fingerprint=abc"
    rule = support_client.get("/admin/notifications/triagerule/1/change/")
    assert rule["Location"] == "/admin/dlq/triagerule/1/change/"
    assert support_client.get(old["Location"]).status_code == 200


def test_only_support_may_replay_or_discard(db, client, viewer_user, support_user, django_user_model):
    [stored] = store([entry(1)])
    changelist = "/admin/dlq/deadletter/"

    nobody = staff_user(django_user_model, "nobody")
    client.force_login(nobody)
    assert client.get(changelist).status_code == 403

    client.force_login(viewer_user)
    page = client.get(changelist)
    assert page.status_code == 200 and b"replay_selected" not in page.content
    assert client.get(f"{changelist}replay-filtered/").status_code == 403
    assert client.post(f"{changelist}replay-filtered/", {"max_id": stored.id}).status_code == 403
    assert client.post(f"{changelist}drain/", {"channel": "email"}).status_code == 403
    client.post(changelist, {"action": "replay_selected", "_selected_action": [stored.id]})
    assert DeadLetter.objects.get().status == "open" and not OutboxEvent.objects.exists()
    with pytest.raises(PermissionDenied):
        replay_dead_letters(actor=viewer_user, ids=[stored.id])
    with pytest.raises(PermissionDenied):
        discard_dead_letters(actor=viewer_user, ids=[stored.id], reason="x")
    assert not DlqAudit.objects.exists()

    client.force_login(support_user)
    page = client.get(changelist)
    assert b"replay_selected" in page.content and b"Replay all matching this filter" in page.content
    response = client.post(changelist, {"action": "replay_selected", "_selected_action": [stored.id]})
    assert response.status_code == 302
    assert DeadLetter.objects.get().status == "replayed" and OutboxEvent.objects.count() == 1
    audit = DlqAudit.objects.get()
    assert (audit.action, audit.actor, audit.actor_name, audit.count) == ("replay", support_user, "support", 1)


def test_discard_asks_for_a_reason_and_is_audited(db, support_client, support_user):
    stored = store([entry(i) for i in range(3)])
    ids = [s.id for s in stored[:2]]
    changelist = "/admin/dlq/deadletter/"
    form = support_client.post(changelist, {"action": "discard_selected", "_selected_action": ids})
    assert form.status_code == 200 and b"Discard <strong>2</strong>" in form.content
    no_reason = support_client.post(
        changelist,
        {
            "action": "discard_selected",
            "_selected_action": ids,
            "apply": "yes",
            "reason": "",
            "index": 0,
            "select_across": 0,
        },
    )
    assert no_reason.status_code == 200 and DeadLetter.objects.filter(status="discarded").count() == 0
    done = support_client.post(
        changelist,
        {
            "action": "discard_selected",
            "_selected_action": ids,
            "apply": "yes",
            "reason": "user asked us to stop",
            "index": 0,
            "select_across": 0,
        },
    )
    assert done.status_code == 302
    assert set(DeadLetter.objects.filter(status="discarded").values_list("id", flat=True)) == set(ids)
    assert DeadLetter.objects.get(pk=ids[0]).discarded_reason == "user asked us to stop"
    audit = DlqAudit.objects.get()
    assert (audit.action, audit.actor, audit.count, audit.reason) == (
        "discard",
        support_user,
        2,
        "user asked us to stop",
    )


def test_admin_list_filters_search_groups_and_detail(db, support_client):
    stored = store(
        [entry(i) for i in range(3)]
        + [
            entry(
                9,
                channel="email",
                error_class="max_attempts",
                cause="transient",
                code="http_503",
                provider="sendgrid",
                message="Service Unavailable",
            )
        ]
    )
    changelist = "/admin/dlq/deadletter/"
    target = DeadLetter.objects.get(pk=stored[1].id)
    for query in (
        "?channel__exact=sms",
        "?category__exact=provider_outage",
        "?status__exact=open",
        "?provider=twilio",
        "?last_failed_at__gte=2020-01-01+00:00:00%2B00:00",
        f"?q={target.recipient}",
        f"?q={target.event_id}",
        f"?fingerprint={target.fingerprint}",
        "?q=%C2%B2",  # a digit to str.isdigit(), not to int()
    ):
        assert support_client.get(changelist + query).status_code == 200, query
    found = support_client.get(changelist, {"q": target.recipient}).context["cl"].result_list
    assert [r.pk for r in found] == [target.pk]
    found = support_client.get(changelist, {"q": target.event_id}).context["cl"].result_list
    assert [r.pk for r in found] == [target.pk]
    outage = support_client.get(changelist, {"category__exact": "provider_outage"}).context["cl"].result_list
    assert [r.channel for r in outage] == ["email"]

    groups = support_client.get(f"{changelist}groups/")
    assert groups.status_code == 200
    counts = sorted(g["count"] for g in groups.context["groups"])
    assert counts == [1, 3], "three alike SMS failures, one e-mail outage"

    detail = support_client.get(f"{changelist}{target.pk}/change/")
    assert detail.status_code == 200
    assert target.payload["event_id"].encode() in detail.content and b"Error history" in detail.content
    assert b"21211" in detail.content


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_replay_of_ten_thousand_entries_by_filter_completes_and_is_audited(support_client, support_user, capsys):
    entries = [
        entry(i, error_class="max_attempts", cause="transient", code="20503", message="Service unavailable")
        for i in range(10_000)
    ]
    started = time.perf_counter()
    store(entries)
    stored_s = time.perf_counter() - started
    store([entry(20_000 + i) for i in range(25)])  # another category, not in the filter
    url = "/admin/dlq/deadletter/replay-filtered/?category__exact=provider_outage"
    confirm = support_client.get(url)
    assert confirm.status_code == 200 and confirm.context["count"] == 10_000
    assert b"<strong>10000</strong> dead letter(s) match" in confirm.content
    started = time.perf_counter()
    response = support_client.post(url, {"max_id": confirm.context["max_id"]})
    replay_s = time.perf_counter() - started
    assert response.status_code == 302 and "category__exact=provider_outage" in response["Location"]
    assert DeadLetter.objects.filter(category="provider_outage", status="replayed").count() == 10_000
    assert DeadLetter.objects.filter(status="open").count() == 25
    audit = DlqAudit.objects.get()
    assert (audit.action, audit.actor, audit.requested, audit.count, audit.skipped) == (
        "replay",
        support_user,
        10_000,
        10_000,
        0,
    )
    assert audit.finished_at and "category__exact=provider_outage" in audit.selection
    assert OutboxEvent.objects.filter(topic=channel_topic("sms")).count() == 10_000
    sample = OutboxEvent.objects.first()
    headers = sample.headers if isinstance(sample.headers, dict) else orjson.loads(sample.headers)
    assert headers["replay"] == str(audit.pk)
    with capsys.disabled():
        print(f"\n[dlq replay] 10,000 entries stored in {stored_s:.2f}s, replayed by filter in {replay_s:.2f}s")
    assert replay_s < 60

    # Replaying the same filter again replays nothing (already replayed), and says so.
    again = support_client.get(url)
    assert again.context["replayable"] == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_drain_of_parked_messages_from_the_dlq_admin(topics, support_client, support_user):
    from tests.kafka_helpers import produce_raw

    KillSwitch.objects.create(channel="email", mode="delay")
    body = channel_message("email")
    produce_raw(channel_topic("email", "delayed"), [("7", orjson.dumps(body))])
    page = support_client.get("/admin/dlq/deadletter/drain/")
    assert page.status_code == 200 and b"Drain email" in page.content
    refused = support_client.post("/admin/dlq/deadletter/drain/", {"channel": "email"}, follow=True)
    assert b"set it to normal" in refused.content and not DlqAudit.objects.exists()
    KillSwitch.objects.filter(channel="email").update(mode="normal")
    support_client.post("/admin/dlq/deadletter/drain/", {"channel": "email"})
    audit = DlqAudit.objects.get()
    assert (audit.action, audit.actor, audit.count, audit.selection) == ("drain", support_user, 1, "email")
    [moved] = consume_matching(
        channel_topic("email"), lambda m: orjson.loads(m.value())["id"] == body["id"], expected=1
    )
    assert moved is not None
