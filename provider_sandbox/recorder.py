"""In-memory, bounded record of accepted requests plus the statistics computed from it.

Only requests the sandbox *accepted* (2xx / SMTP 250) are recorded.  Bodies are kept raw and parsed
lazily when served, which keeps a record at a few hundred bytes.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson


def parse_body(raw: bytes, content_type: str) -> Any:
    """Best-effort decoding of a recorded body: JSON, form, RFC 5322 message, else text."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if not raw:
        return None
    try:
        if ctype.endswith("json") or (not ctype and raw[:1] in (b"{", b"[")):
            return orjson.loads(raw)
        if ctype == "application/x-www-form-urlencoded":
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
            return {k: v[0] if len(v) == 1 else v for k, v in form.items()}
        if ctype == "message/rfc822":
            return _parse_email(raw)
    except (ValueError, UnicodeDecodeError):
        pass
    return raw.decode("utf-8", "replace")


def _parse_email(raw: bytes) -> dict[str, Any]:
    msg = email.parser.BytesParser(policy=email.policy.default).parsebytes(raw)
    text_part = msg.get_body(preferencelist=("plain", "html"))
    return {
        "headers": {k: str(v) for k, v in msg.items()},
        "subject": str(msg.get("Subject", "")),
        "text": text_part.get_content() if text_part is not None else None,
        "raw": raw.decode("utf-8", "replace"),
    }


@dataclass(slots=True)
class Record:
    """One accepted request."""

    seq: int
    provider: str
    t_mono: float  # arrival time (time.monotonic), the same timestamp the rate limiter used
    t_wall: float  # arrival time (time.time)
    recipients: tuple[str, ...]
    keys: tuple[str, ...]  # idempotency / notification ids found in the request
    provider_id: str | None  # the id the sandbox answered with (X-Message-Id, SM..., apns-id, ...)
    method: str
    path: str
    content_type: str
    raw: bytes
    meta: dict[str, Any] | None = None

    def to_dict(self, *, include_raw: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "provider": self.provider,
            "t_mono": self.t_mono,
            "t_wall": self.t_wall,
            "recipient": self.recipients[0] if self.recipients else None,
            "recipients": list(self.recipients),
            "idempotency_key": self.keys[0] if self.keys else None,
            "idempotency_keys": list(self.keys),
            "provider_id": self.provider_id,
            "method": self.method,
            "path": self.path,
            "content_type": self.content_type,
            "body": parse_body(self.raw, self.content_type),
        }
        if self.meta:
            out["meta"] = self.meta
        if include_raw:
            out["raw"] = self.raw.decode("utf-8", "replace")
        return out


def max_in_window(times: list[float], window: float = 1.0) -> tuple[int, float | None]:
    """Largest number of timestamps inside any half-open interval ``[t, t + window)``.

    Returns ``(count, start)`` where ``start`` is the first timestamp of a densest window.
    """
    if not times:
        return 0, None
    ordered = sorted(times)
    best, best_start, lo = 0, ordered[0], 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= window:
            lo += 1
        if hi - lo + 1 > best:
            best, best_start = hi - lo + 1, ordered[lo]
    return best, best_start


@dataclass
class Counters:
    """Totals since start / last reset (not bounded by the record buffer)."""

    received: int = 0
    accepted: int = 0
    rate_limited: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    extra: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "accepted": self.accepted,
            "rate_limited": self.rate_limited,
            "errors": dict(self.errors),
            "errors_total": sum(self.errors.values()),
            **dict(self.extra),
        }


class Recorder:
    """Bounded FIFO of :class:`Record` with incremental duplicate accounting."""

    def __init__(self, provider: str, maxlen: int) -> None:
        self.provider = provider
        self.maxlen = max(1, int(maxlen))
        self.records: deque[Record] = deque()
        self.seq = 0
        self.evicted = 0
        self._key_counts: Counter[str] = Counter()
        self._dup_keys = 0  # keys seen more than once
        self._dup_extra = 0  # sum over keys of (count - 1)

    def reset(self) -> None:
        self.records.clear()
        self.evicted = 0
        self._key_counts.clear()
        self._dup_keys = self._dup_extra = 0

    def add(
        self,
        *,
        t_mono: float,
        t_wall: float,
        recipients: list[str] | tuple[str, ...],
        keys: list[str] | tuple[str, ...] = (),
        provider_id: str | None = None,
        method: str = "POST",
        path: str = "",
        content_type: str = "",
        raw: bytes = b"",
        meta: dict[str, Any] | None = None,
    ) -> Record:
        self.seq += 1
        record = Record(
            seq=self.seq,
            provider=self.provider,
            t_mono=t_mono,
            t_wall=t_wall,
            recipients=tuple(recipients),
            keys=tuple(k for k in keys if k),
            provider_id=provider_id,
            method=method,
            path=path,
            content_type=content_type,
            raw=raw,
            meta=meta,
        )
        if len(self.records) >= self.maxlen:
            self._forget(self.records.popleft())
            self.evicted += 1
        self.records.append(record)
        counts = self._key_counts
        for key in record.keys:
            counts[key] += 1
            if counts[key] == 2:
                self._dup_keys += 1
            if counts[key] >= 2:
                self._dup_extra += 1
        return record

    def _forget(self, record: Record) -> None:
        counts = self._key_counts
        for key in record.keys:
            if counts[key] >= 2:
                self._dup_extra -= 1
            if counts[key] == 2:
                self._dup_keys -= 1
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]

    def since(self, since: int = 0, limit: int = 1000, recipient: str | None = None) -> list[Record]:
        """Records with ``seq > since`` (oldest first), at most ``limit``."""
        if not self.records:
            return []
        first = self.records[0].seq
        start = max(0, since - first + 1)
        selected = itertools.islice(self.records, start, None)
        if recipient is not None:
            selected = (r for r in selected if recipient in r.recipients)
        return list(itertools.islice(selected, max(0, limit)))

    def duplicates(self, sample: int = 20) -> dict[str, Any]:
        examples = []
        if self._dup_keys:
            examples = [
                {"key": key, "count": count}
                for key, count in itertools.islice((kv for kv in self._key_counts.items() if kv[1] > 1), sample)
            ]
        return {"keys": self._dup_keys, "extra_requests": self._dup_extra, "sample": examples}

    def stats(self, window: float = 1.0) -> dict[str, Any]:
        """Window / histogram / duplicate statistics over the records currently held."""
        monos = [r.t_mono for r in self.records]
        best, start_mono = max_in_window(monos, window)
        start_wall = None
        if start_mono is not None:
            # Translate the densest window's start back to wall time via the matching record.
            for r in self.records:
                if r.t_mono == start_mono:
                    start_wall = r.t_wall
                    break
        per_second = Counter(int(r.t_wall) for r in self.records)
        return {
            "recorded": len(self.records),
            "evicted": self.evicted,
            "window_s": window,
            "max_window": best,
            "max_window_start_wall": start_wall,
            "max_1s_window": best if window == 1.0 else max_in_window(monos, 1.0)[0],
            "per_second": [{"second": s, "count": c} for s, c in sorted(per_second.items())],
            "first_wall": min((r.t_wall for r in self.records), default=None),
            "last_wall": max((r.t_wall for r in self.records), default=None),
            "duplicates": self.duplicates(),
        }
