"""A cancelled or paused campaign's halt flag in Redis, honoured by the channel workers.

Messages the expander already released into `notif.<channel>` would otherwise still go out after
a cancel. The flag makes the workers drop them (cancel) or hold them back in a retry tier (pause),
so a cancel takes effect within one worker batch. Written on commit of the state change; cleared on
resume. RedisError policy: setting the flag fails loudly in the admin action's log but never undoes
the committed state change (the expander stops releasing anyway); workers reading it fail open
(send), since a missing flag only means the pre-cancel behaviour.
"""

import logging

import redis

from campaigns.progress import campaign_key
from notifications.redis_connect import REDIS_ERRORS
from notifications.redis_multi import get_many

log = logging.getLogger(__name__)

HALT_TTL_SECONDS = 7 * 24 * 3600


def halt_key(campaign_id: int | str) -> str:
    return campaign_key(campaign_id, "halt")


def set_halt(client: redis.Redis, campaign_id: int, state: str | None) -> None:
    """state: 'cancelled' or 'paused' to halt, None to clear (resume)."""
    try:
        if state is None:
            client.delete(halt_key(campaign_id))
        else:
            client.set(halt_key(campaign_id), state, ex=HALT_TTL_SECONDS)
    except REDIS_ERRORS:
        log.exception("could not write the campaign halt flag", extra={"campaign_id": campaign_id})


def read_halts(client: redis.Redis, campaign_ids: list[int | str]) -> dict[str, str]:
    """{campaign id: 'cancelled'|'paused'} for the halted ones among `campaign_ids` (one MGET; on a
    cluster one per campaign slot, in one pipeline)."""
    if not campaign_ids:
        return {}
    try:
        values = get_many(client, [halt_key(c) for c in campaign_ids])
    except REDIS_ERRORS:
        log.warning("campaign halt flags unavailable; sending", exc_info=True)
        return {}
    return {str(c): v.decode() for c, v in zip(campaign_ids, values, strict=True) if v}
