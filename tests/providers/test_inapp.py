"""In-app adapter: bulk, idempotent inbox writes through ``preferences.services.inbox_write_many``."""

from __future__ import annotations

import asyncio

import pytest
from django.contrib.auth import get_user_model

from notifications.providers.inapp import InAppAdapter
from notifications.providers.results import SendOutcome
from preferences.models import InboxMessage
from tests.providers.conftest import make_message, run

# The adapter writes from its own threads (own connections), so the rows must really be committed.
pytestmark = pytest.mark.django_db(transaction=True)


def inapp_message(user_id: int, title: str = "Shipped", body: str = "On its way") -> dict:
    message = make_message("inapp", {"user_id": user_id}, {"title": title, "body": body, "data": {"order": 42}})
    message["user_id"] = user_id
    return message


@pytest.fixture
def users() -> list[int]:
    user_model = get_user_model()
    return [user_model.objects.create_user(username=f"inbox-user-{i}").pk for i in range(3)]


def test_send_many_writes_once_and_redelivery_inserts_nothing(users: list[int]) -> None:
    messages = [inapp_message(user_id) for user_id in users]

    async def scenario():
        async with InAppAdapter() as inapp:
            first = await inapp.send_many(messages)
            again = await inapp.send_many(messages)
            return first, again, inapp.batches_written

    first, again, batches = run(scenario())
    assert [r.outcome for r in first + again] == [SendOutcome.SENT] * 6
    assert [r.provider_message_id for r in first] == [m["id"] for m in messages]
    assert batches == 2  # one INSERT per call, not one per message
    rows = InboxMessage.objects.order_by("user_id")
    assert rows.count() == 3
    row = rows.get(notification_id=messages[0]["id"])
    assert (row.user_id, row.type_key, row.category, row.title, row.body, row.data) == (
        users[0],
        "order.shipped",
        "transactional",
        "Shipped",
        "On its way",
        {"order": 42},
    )


def test_concurrent_single_sends_are_coalesced_into_few_batches(users: list[int]) -> None:
    messages = [inapp_message(users[i % 3], title=f"n{i}") for i in range(120)]

    async def scenario():
        async with InAppAdapter(batch_size=50, batch_window=0.01) as inapp:
            results = await asyncio.gather(*(inapp.send(m) for m in messages))
            return results, inapp.batches_written

    results, batches = run(scenario())
    assert all(r.outcome is SendOutcome.SENT for r in results)
    assert batches <= 4  # 120 sends -> batches of at most 50
    assert InboxMessage.objects.count() == 120


def test_poison_rows_fail_alone(users: list[int]) -> None:
    good = [inapp_message(users[0]), inapp_message(users[1])]
    poison = inapp_message(users[2], body="nul \x00 byte")  # PostgreSQL text cannot hold NUL
    no_user = make_message("inapp", {}, {"title": "x"}, user_id=None)

    async def scenario():
        async with InAppAdapter() as inapp:
            return await inapp.send_many([good[0], poison, no_user, good[1]])

    results = run(scenario())
    assert [r.outcome for r in results] == [
        SendOutcome.SENT,
        SendOutcome.PERMANENT,
        SendOutcome.PERMANENT,
        SendOutcome.SENT,
    ]
    assert results[1].error_code == "database_rejected"
    assert results[2].error_code == "invalid_message"
    assert set(InboxMessage.objects.values_list("notification_id", flat=True)) == {m["id"] for m in good}


def test_a_lone_poison_row_and_a_bad_timestamp(users: list[int]) -> None:
    poison = inapp_message(users[0], title="nul \x00")
    odd_time = inapp_message(users[1])
    odd_time["created_at"] = "yesterday-ish"

    async def scenario():
        async with InAppAdapter() as inapp:
            return await inapp.send(poison), await inapp.send(odd_time)

    poisoned, stored = run(scenario())
    assert (poisoned.outcome, poisoned.error_code) == (SendOutcome.PERMANENT, "database_rejected")
    assert stored.outcome is SendOutcome.SENT  # created_at falls back to now
    assert list(InboxMessage.objects.values_list("notification_id", flat=True)) == [odd_time["id"]]


def test_database_outage_is_transient_for_the_whole_batch(users: list[int]) -> None:
    from django.db import OperationalError

    def broken_writer(rows):
        raise OperationalError("connection refused")

    async def scenario():
        async with InAppAdapter(writer=broken_writer) as inapp:
            return await inapp.send_many([inapp_message(u) for u in users])

    results = run(scenario())
    assert {(r.outcome, r.error_code) for r in results} == {(SendOutcome.TRANSIENT, "database_unavailable")}
