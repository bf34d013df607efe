"""Lua scripts shipped in ``preferences/lua/``, as client-independent redis-py ``Script`` objects."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from redis.commands.core import Script

__all__ = ["LUA_DIR", "lua_script"]

LUA_DIR = Path(__file__).resolve().parent / "lua"


@cache
def lua_script(name: str) -> Script:
    """``Script`` for ``lua/<name>.lua``: call it with ``client=`` for one call, or run many with
    ``notifications.redis_multi.evalsha_pipelined`` (one server or a cluster).

    Built from bytes, so it is bound to no client: EVALSHA, with SCRIPT LOAD on NOSCRIPT.
    """
    return Script(None, (LUA_DIR / f"{name}.lua").read_bytes())  # type: ignore[arg-type]
