"""Uptime per endpoint over 24 h and 7 d, computed from its status events.

Definition: of the time in the window during which the hub knew the endpoint's status (healthy
or unhealthy), the share it was healthy, in percent with one decimal. Time before the endpoint
was registered and time while it was `unknown` (never answered yet) count for neither side;
with no known time at all the uptime is null. The status at the window's start is the `to` of
the last status event before it, else the `from` of the first one inside it, else (no event in
7 days) the endpoint's current status.

Rows are rebuilt on every change and uptime moves slowly, so each process caches an endpoint's
figures for UPTIME_CACHE_SECONDS, or until its status changes; the figures of many endpoints
are computed from one query.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.db.models import FloatField, Func
from django.db.models.fields.json import KT

from registry.models import Endpoint, Event

WINDOWS = (timedelta(hours=24), timedelta(days=7))
# A steady endpoint's 24 h uptime moves at most 0.35 points in 5 minutes; a status change
# refreshes it at once.
UPTIME_CACHE_SECONDS = 300.0
CACHE_MAX = 100_000

Transition = tuple[datetime, str, str]  # (at, from, to)
_HEALTHY, _UNHEALTHY = Endpoint.Status.HEALTHY, Endpoint.Status.UNHEALTHY


def uptime_percent(
    transitions: Sequence[Transition], current: str, registered_at: datetime, now: datetime, window: timedelta
) -> float | None:
    """The endpoint's uptime over `window` ending at `now`."""
    moves = [(at.timestamp(), old, new) for at, old, new in transitions]
    start = max((now - window).timestamp(), registered_at.timestamp())
    return _share(moves, current, start, now.timestamp())


def _share(moves: Sequence[tuple[float, str, str]], current: str, start: float, end: float) -> float | None:
    """Healthy time over known time in [start, end], from (epoch seconds, from, to) moves in time order."""
    if start >= end:
        return None
    # The status at `start`: after the last move before it, else before the first move after it.
    before = [m for m in moves if m[0] <= start]
    after = moves[len(before)] if len(before) < len(moves) else None
    status = before[-1][2] if before else after[1] if after else current
    healthy = known = 0.0
    edge = start
    for at, _, new in [*(m for m in moves if start < m[0] <= end), (end, status, status)]:
        if status == _HEALTHY:
            healthy += at - edge
        if status in (_HEALTHY, _UNHEALTHY):
            known += at - edge
        edge, status = at, new
    return round(100 * healthy / known, 1) if known > 0 else None


class _Epoch(Func):
    """A datetime column as seconds since 1970 (a float): no datetime object per row."""

    output_field = FloatField()

    def as_sqlite(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="((julianday(%(expressions)s) - 2440587.5) * 86400.0)")

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(compiler, connection, template="EXTRACT(EPOCH FROM %(expressions)s)::float8")


# endpoint id -> (valid until (monotonic), status, registered_at, (uptime_24h, uptime_7d))
_cache: dict[int, tuple[float, str, datetime, tuple]] = {}
_lock = threading.Lock()


def uptimes(endpoints: Iterable[tuple[int, str, datetime]], now: datetime, *, complete: bool) -> dict[int, tuple]:
    """(uptime_24h, uptime_7d) per endpoint, from (id, status, registered_at) triples.

    Reads the status events of the endpoints not cached (or whose status changed) in one query;
    `complete` says these are all endpoints (the query then needs no id list).
    """
    endpoints = list(endpoints)
    mono = time.monotonic()
    found: dict[int, tuple] = {}
    missing = []
    for endpoint_id, status, registered in endpoints:
        hit = _cache.get(endpoint_id)
        if hit is not None and hit[0] > mono and hit[1] == status and hit[2] == registered:
            found[endpoint_id] = hit[3]
        else:
            missing.append((endpoint_id, status, registered))
    if not missing:
        return found
    moves = _moves(now, None if complete and len(missing) == len(endpoints) else [m[0] for m in missing])
    end = now.timestamp()
    with _lock:
        if len(_cache) > CACHE_MAX:
            _cache.clear()
        for endpoint_id, status, registered in missing:
            # Events before the registration belong to an earlier endpoint that had this id.
            born = registered.timestamp()
            mine = [m for m in moves.get(endpoint_id, ()) if m[0] >= born]
            mine.sort()
            figures = tuple(_share(mine, status, max(end - w.total_seconds(), born), end) for w in WINDOWS)
            # Spread the expiries: a snapshot then recomputes a few endpoints, not all at once.
            valid = mono + UPTIME_CACHE_SECONDS * random.uniform(0.8, 1.0)
            _cache[endpoint_id] = (valid, status, registered, figures)
            found[endpoint_id] = figures
    return found


def _moves(now: datetime, ids: list[int] | None) -> dict[int, list[tuple[float, str, str]]]:
    """endpoint id -> its status moves (epoch seconds, from, to) of the longest window, one query."""
    events = Event.objects.filter(at__gte=now - max(WINDOWS))
    if ids is None:
        events = events.filter(kind=Event.Kind.STATUS)  # the (kind, at) index
    else:
        # The (endpoint_id, at) index: with `kind` in the query SQLite picks (kind, at) and reads
        # the whole fleet's week to find one endpoint's events.
        events = events.filter(endpoint_id__in=ids)
    rows = events.values_list("endpoint_id", "kind", _Epoch("at"), KT("detail__from"), KT("detail__to"))
    found: dict[int, list[tuple[float, str, str]]] = {}
    for endpoint_id, kind, at, old, new in rows:
        if kind == Event.Kind.STATUS:
            found.setdefault(endpoint_id, []).append((at, old, new))
    return found


def forget_cached_uptimes() -> None:
    """Empty the cache (tests that write events behind the services' back)."""
    with _lock:
        _cache.clear()
