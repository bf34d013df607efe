"""Progress counters: worker outcomes and expansion in Redis, flushed to PostgreSQL, shown as JSON."""

import pytest
import redis
from django.conf import settings
from redis.backoff import NoBackoff
from redis.retry import Retry

from campaigns import services
from campaigns.models import CampaignState
from campaigns.progress import (
    flush_progress,
    outstanding,
    progress_snapshot,
    read_counters,
    record_expansion,
    record_outcomes,
    sent_tally,
)
from campaigns.throttle import campaign_throttle_take
from notifications.delivery.dedup import ConfirmResult, DedupStore
from notifications.delivery.token_bucket import RateLimiterUnavailable
from notifications.redis_client import get_redis
from tests.campaigns.conftest import make_campaign

pytestmark = pytest.mark.django_db


@pytest.fixture
def prefix(settings):
    import uuid

    settings.REDIS_KEY_PREFIX = f"tprog{uuid.uuid4().hex[:6]}:"
    return settings.REDIS_KEY_PREFIX


def send(campaign, *message_ids):
    """What a worker does for sent campaign messages: claim, then confirm with the campaign's tally."""
    store = DedupStore(get_redis(), settings.REDIS_KEY_PREFIX)
    store.claim_many(message_ids)
    return store.confirm_many(message_ids, tallies=dict.fromkeys(message_ids, sent_tally(campaign.pk)))


def test_each_outcome_of_a_campaign_message_is_counted_once(prefix, promo_type, marketer):
    campaign = make_campaign(promo_type, channels=["email", "push"])
    services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    services.campaign_transition(campaign_id=campaign.pk, to=CampaignState.RUNNING, audience_size=10)
    campaign.refresh_from_db()
    launch = str(campaign.launch_id)
    meta = {"campaign_id": campaign.pk, "launch_id": launch, "throttle": None}
    sent = [f"{launch}:1:email", f"{launch}:2:email"]
    send(campaign, *sent)
    assert set(send(campaign, *sent).values()) == {ConfirmResult.ALREADY_SENT}, "a redelivered send counts nothing"
    outcomes = [
        (sent[0], "sent", meta),  # sends only feed the rate here
        (f"{launch}:3:email", "dlq", meta),
        (f"{launch}:3:email", "dlq", meta),  # settled again after a worker crash: counted once
        (f"{launch}:4:email", "retrying", meta),  # not an outcome yet
        (sent[1], "deduplicated", meta),
        (f"{launch}:5:email", "suppressed", meta),  # dropped by a worker (campaign cancelled): halted too
        (f"{launch}:6:email", "dlq", None),  # not a campaign message
    ]
    assert record_outcomes(outcomes) == 4
    assert record_outcomes(outcomes[1:2]) == 0
    record_expansion(
        get_redis(),
        campaign_id=campaign.pk,
        launch_id=str(campaign.launch_id),
        channel="email",
        batch=0,
        cursor=10,
        queued=9,
        suppressed=1,
        extra=0,
        done=True,
    )
    counters = read_counters(get_redis(), [campaign.pk])[campaign.pk]
    assert counters == {
        "queued": 9,
        "suppressed": 2,
        "extra": 0,
        "sent": 2,
        "failed": 1,
        "deduplicated": 1,
        "halted": 1,
    }
    assert outstanding(counters) == 9 - 2 - 1 - 1, "queued messages without a sent, failed or halted outcome"
    snapshot = progress_snapshot(campaign)
    assert snapshot["total"] == 20 and snapshot["done"] == 5 and snapshot["percent"] == 25.0
    assert snapshot["live"] is True
    assert flush_progress() == 1
    campaign.refresh_from_db()
    assert (campaign.sent, campaign.failed, campaign.deduplicated, campaign.queued) == (2, 1, 1, 9)
    assert campaign.suppressed == 2


def test_record_outcomes_raises_only_when_strict_while_redis_is_down(promo_type):
    dead = redis.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))
    meta = {"campaign_id": 1, "launch_id": "x"}
    assert record_outcomes([("x:1:email", "dlq", meta)], redis_client=dead) == 0
    with pytest.raises(redis.ConnectionError):
        record_outcomes([("x:1:email", "dlq", meta)], redis_client=dead, strict=True)


def test_campaign_throttle_take(prefix):
    client = get_redis()
    granted = [campaign_throttle_take(client, campaign_id=77, rate=10)[0] for _ in range(3)]
    assert granted == [1, 0, 0], "burst of max(1, 10 x 0.1) = 1 token, then refill at 10/s"
    granted, wait = campaign_throttle_take(client, campaign_id=77, rate=10)
    assert granted == 0 and 0 < wait <= 0.11
    assert campaign_throttle_take(client, campaign_id=78, rate=None) == (1, 0.0)
    dead = redis.Redis(port=1, socket_timeout=0.1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(RateLimiterUnavailable):
        campaign_throttle_take(dead, campaign_id=77, rate=10)
