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

import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from registry.models import Endpoint, Event

WINDOWS = (timedelta(hours=24), timedelta(days=7))
UPTIME_CACHE_SECONDS = 60.0
CACHE_MAX = 100_000

Transition = tuple[datetime, str, str]  # (at, from, to)


def uptime_percent(
    transitions: Sequence[Transition], current: str, registered_at: datetime, now: datetime, window: timedelta
) -> float | None:
    """The endpoint's uptime over `window` ending at `now` (transitions sorted by time)."""
    start = max(now - window, registered_at)
    if start >= now:
        return None
    before = [t for t in transitions if t[0] <= start]
    inside = [t for t in transitions if start < t[0] <= now]
    if before:
        status = before[-1][2]
    elif inside:
        status = inside[0][1]
    else:
        status = current
    healthy = known = 0.0
    edge = start
    for at, _, new in [*inside, (now, "", "")]:
        seconds = (at - edge).total_seconds()
        if status == Endpoint.Status.HEALTHY:
            healthy += seconds
            known += seconds
        elif status == Endpoint.Status.UNHEALTHY:
            known += seconds
        edge, status = at, new
    return round(100 * healthy / known, 1) if known > 0 else None


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
    events = Event.objects.filter(kind=Event.Kind.STATUS, at__gte=now - max(WINDOWS))
    if not complete or len(missing) < len(endpoints):
        events = events.filter(endpoint_id__in=[m[0] for m in missing])
    by_endpoint: dict[int, list[Transition]] = {}
    for endpoint_id, at, detail in events.order_by("at", "id").values_list("endpoint_id", "at", "detail"):
        if isinstance(detail, dict):
            by_endpoint.setdefault(endpoint_id, []).append((at, detail.get("from", ""), detail.get("to", "")))
    with _lock:
        if len(_cache) > CACHE_MAX:
            _cache.clear()
        for endpoint_id, status, registered in missing:
            # Events before the registration belong to an earlier endpoint that had this id.
            mine = [t for t in by_endpoint.get(endpoint_id, ()) if t[0] >= registered]
            figures = tuple(uptime_percent(mine, status, registered, now, w) for w in WINDOWS)
            _cache[endpoint_id] = (mono + UPTIME_CACHE_SECONDS, status, registered, figures)
            found[endpoint_id] = figures
    return found


def forget_cached_uptimes() -> None:
    """Empty the cache (tests that write events behind the services' back)."""
    with _lock:
        _cache.clear()
