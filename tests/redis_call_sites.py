"""The call sites that send Redis several keys at once (a script, a MULTI, a many-key read), found by
scanning the code base, and the audited list of them with the keys each one sends."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("notifications", "campaigns", "preferences", "config")

#: Every call site (module:function) that hands Redis several keys at once, and why they share a slot.
AUDITED = {
    # dedup_confirm / dedup_release / dedup_take_over / worker_liveness: the dedup key with its shard's
    # counter or its owner's liveness key in that shard (same {d…} tag); a liveness key alone.
    "notifications/delivery/dedup.py:DedupStore.__init__": (
        "register_lua dedup_confirm, dedup_release, dedup_take_over, worker_liveness"
    ),
    "notifications/delivery/dedup.py:DedupStore._run_script_many": (
        "evalsha_pipelined: DedupStore.key + tally_key or liveness_key; _liveness_key alone"
    ),
    # token bucket scripts: one key each ({prefix}tb:<bucket>).
    "notifications/delivery/token_bucket.py:TokenBucket.__init__": "register_lua take/book/hold: one key",
    "notifications/delivery/redis_client.py:register_lua": "the helper itself",
    # endpoint pauses: the pause key and the failure run of one endpoint (same {<digest>} tag).
    "notifications/delivery/endpoint_backoff.py:EndpointBackoff.__init__": "register_script pause (one key), failure",
    "notifications/redis_connect.py:PlatformRedisCluster.pipeline": "builds a pipeline; sends no key itself",
    "notifications/redis_multi.py:get_many": "the helper itself: MGET, or one MGET per slot on a cluster",
    "notifications/redis_multi.py:evalsha_pipelined": "the helper itself: EVALSHA of the calls' own keys",
    # preferences: one key per fenced set; frequency caps: the {user} tag of one request.
    "preferences/scripts.py:lua_script": "Script objects of the preference scripts",
    "preferences/cache.py:_fenced_set_many": "prefs_cache_set: one key per call",
    "preferences/cache.py:preferences_get_many": "get_many of users' cache keys (split by slot)",
    "preferences/frequency.py:frequency_cap_take_many": "frequency_cap: the request's caps, one {user_id} tag",
    # campaigns: everything under the campaign's {c<id>} tag.
    "campaigns/progress.py:<module>": "COUNT_ONCE Script",
    "campaigns/progress.py:record_outcomes": "count_once: progress + counted of one campaign",
    "campaigns/progress.py:record_expansion": "MULTI: cursor, progress, deferred, rate, expanded of one campaign",
    "campaigns/progress.py:read_sent": "get_many of the sent shards (split by slot)",
    "campaigns/halt.py:read_halts": "get_many of halt flags (split by slot)",
}

#: Call sites the scan matches by name that do not talk to Redis.
NOT_REDIS = {
    "notifications/outbox/relay.py:OutboxRelay.relay_batch": "psycopg's conn.transaction()",
}

MULTI_KEY_METHODS = {"mget", "mset", "msetnx", "eval", "evalsha", "register_script", "transaction", "watch"}
MULTI_KEY_FUNCTIONS = {"register_lua", "lua_script", "evalsha_pipelined", "get_many", "Script"}
MULTI_KEY_COMMANDS = {"MGET", "MSET", "EVAL", "EVALSHA", "MULTI", "FCALL"}


def sends_several_keys(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if name in MULTI_KEY_METHODS or name in MULTI_KEY_FUNCTIONS:
        return True
    if name == "pipeline":
        return any(
            kw.arg == "transaction" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)
            for kw in call.keywords
        )
    if name == "execute_command" and call.args and isinstance(call.args[0], ast.Constant):
        return str(call.args[0].value).upper() in MULTI_KEY_COMMANDS
    return False


def multi_key_call_sites() -> set[str]:
    """module:function of every call that sends several keys to Redis at once."""
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            relative = path.relative_to(ROOT).as_posix()

            def visit(node: ast.AST, scope: list[str], relative: str = relative) -> None:
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        visit(child, [*scope, child.name])
                        continue
                    if isinstance(child, ast.Call) and sends_several_keys(child):
                        found.add(f"{relative}:{'.'.join(scope) or '<module>'}")
                    visit(child, scope)

            visit(tree, [])
    return found
