"""Helpers of the campaign tests: a campaign made running, a batch message emitted, what the expander released,
what a provider sandbox was sent."""

import collections
from collections.abc import Callable
from datetime import datetime

import orjson
from confluent_kafka import Producer
from django.utils import timezone

from campaigns import services
from campaigns.expansion.expander import BatchExpander, ExpanderConfig
from campaigns.models import CampaignState
from notifications.bus.config import producer_config
from notifications.bus.topics import channel_topic, delivery_topic
from notifications.priority import Lane
from notifications.redis_client import get_redis
from tests.kafka_helpers import consume


def launch_running(campaign, marketer):
    """Launch `campaign` and move it to running, as the orchestrator would; returns it refreshed."""
    services.campaign_launch(campaign_id=campaign.pk, user=marketer)
    services.campaign_transition(campaign_id=campaign.pk, to=CampaignState.RUNNING)
    campaign.refresh_from_db()
    return campaign


def emit(campaign, channel, user_ids, batch=0):
    """Produce one batch message of `campaign` for `user_ids`; returns it as consumed from its topic."""
    payload = {
        "v": 1,
        "type": "campaign.batch",
        "campaign_id": campaign.pk,
        "launch_id": str(campaign.launch_id),
        "channel": channel,
        "batch": batch,
        "user_ids": user_ids,
        "content": {"campaign_id": campaign.pk, "copy_version": ""},
        "created_at": "2026-11-25T10:00:00+00:00",
    }
    producer = Producer(producer_config())
    producer.produce(channel_topic(channel, "batch"), key=f"{campaign.launch_id}:{batch}", value=orjson.dumps(payload))
    assert producer.flush(10) == 0
    messages = consume(channel_topic(channel, "batch"), expected=batch + 1, timeout=10)
    return [m for m in messages if orjson.loads(m.value())["batch"] == batch][-1:]


def expander(wall_clock: Callable[[], datetime] = timezone.now, **config) -> BatchExpander:
    """A batch expander without pacing (unless `config` asks for it), on `wall_clock`."""
    defaults = {"chunk_size": 1000, "time_budget": 5.0, "pacing": False}
    return BatchExpander(
        producer=Producer(producer_config()),
        redis_client=get_redis(),
        config=ExpanderConfig(**{**defaults, **config}),
        wall_clock=wall_clock,
    )


def released(channel, expected, timeout=10.0, idle=0.5):
    """The per-recipient messages on the channel's bulk lane."""
    return [
        orjson.loads(m.value())
        for m in consume(delivery_topic(channel, Lane.BULK), expected=expected, timeout=timeout, idle=idle)
    ]


def keys(sandbox, name: str) -> collections.Counter:
    """How often the provider sandbox `name` was sent each idempotency key."""
    return collections.Counter(k for r in sandbox.client(name).iter_requests() for k in r["idempotency_keys"][:1])
