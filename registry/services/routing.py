"""Routing: which endpoints an agent should use for a model, best first (GET /api/v1/route).

Answered from an index held in each process's memory, never by building the snapshot:

1. model name -> the endpoints holding it (status, URL, latency, loaded, size), rebuilt only
   when a cheap aggregate over the endpoint table (count, id sum, revision sum, latency sum,
   newest registration) moved: every visible change to an endpoint or its models bumps its
   revision in the same transaction, so an unchanged mark means unchanged holders;
2. host name -> free VRAM (host and largest GPU), CPU and report time, read again whenever the
   index is older than ROUTE_CACHE_SECONDS (reports arrive every few seconds at fleet size, so
   there is no point in comparing a mark first);
3. per model, the ranked groups of equal candidates, computed on the first request for it.

Changes made in this process (registrations, removals) drop the index at commit, so a reader
sees its own writes; changes made elsewhere (probes in the Celery worker, another daphne) are
seen within ROUTE_CACHE_SECONDS.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Max, Sum
from django.utils import timezone

from registry import signals
from registry.models import Endpoint, EndpointModel, Host
from registry.services.common import RegistryError

logger = logging.getLogger(__name__)

GiB = 1024**3
MAX_ROUTES = 100


class ModelNotHeld(RegistryError):
    """No endpoint holds the model; `models` lists what the fleet's reachable endpoints hold."""

    status_code = 404

    def __init__(self, model: str, models: list[str]):
        super().__init__("model_not_found", f"no endpoint holds {model}; see models for those the fleet has.")
        self.models = models


class NoHealthyHolder(RegistryError):
    """Endpoints hold the model, but none of them answers now."""

    status_code = 503

    def __init__(self, model: str, holders: int):
        noun = "endpoint holds" if holders == 1 else "endpoints hold"
        super().__init__("no_healthy_endpoint", f"{holders} {noun} {model}, but none is healthy now; retry later.")
        self.holders = holders


@dataclass(frozen=True, slots=True)
class _Holder:
    model: str
    id: int
    host: str
    name: str
    url: str
    healthy: bool
    latency_ms: int | None
    loaded: bool
    size: int
    size_vram: int | None


@dataclass(frozen=True, slots=True)
class _HostState:
    raw_at: object  # last_report_at as the database driver returns it (compared, never parsed)
    reported_at: datetime | None
    cpu_percent: float | None
    vram_free: int | None  # summed over the GPUs; None without a GPU
    gpu_free: int | None  # the largest free VRAM of one GPU (the host's when no per-GPU detail)


@dataclass(slots=True)
class _Index:
    mark: dict
    endpoints: dict[int, tuple[tuple, list[_Holder]]]  # id -> (what its holders were built from, holders)
    holders: dict[str, list[_Holder]]  # model name -> holders, any status
    hosts: dict[str, _HostState]
    built_at: datetime  # answers describe the registry as read at this time
    checked: float  # time.monotonic() of the read
    ranked: dict[str, list[list[tuple[_Holder, _HostState | None]]]] = field(default_factory=dict)
    host_keys: dict[str, tuple] | None = None


_index: _Index | None = None
_dirty = False
_lock = threading.Lock()


def forget_route_index() -> None:
    """Drop this process's routing index (tests; after changes made behind the services)."""
    global _index
    _index = None


def _mark_dirty(**_kwargs) -> None:
    def dirty() -> None:
        global _dirty
        _dirty = True

    transaction.on_commit(dirty)


signals.endpoints_changed.connect(_mark_dirty, dispatch_uid="routing-endpoints-changed")
signals.endpoints_removed.connect(_mark_dirty, dispatch_uid="routing-endpoints-removed")


def _endpoint_mark() -> dict:
    # One aggregate over the endpoint table (no join): the latency sum catches probe latencies
    # written without a revision bump, the id sum and newest registration a removal followed by
    # a registration that reuses the count (or, on SQLite, the id).
    return Endpoint.objects.aggregate(
        n=Count("id"), ids=Sum("id"), rev=Sum("revision"), lat=Sum("latency_ms"), reg=Max("registered_at")
    )


_MODEL_VALUES = ("endpoint_id", "name", "loaded", "size", "size_vram")
_CHUNK = 500  # ids per IN (...) query


def _read_endpoints(previous: dict) -> dict[int, tuple[tuple, list[_Holder]]]:
    """Endpoint id -> holders; model rows are read only for endpoints whose row moved (a model
    change always bumps the revision) since `previous`. Raw rows: nothing is converted that is
    only compared."""
    found, changed = {}, []
    endpoint, host = (connection.ops.quote_name(m._meta.db_table) for m in (Endpoint, Host))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.id, e.revision, e.registered_at, e.status, e.latency_ms, h.name, e.address, e.port, e.name, e.scheme "  # noqa: S608
            f"FROM {endpoint} e JOIN {host} h ON h.id = e.host_id"
        )
        for row in cursor.fetchall():
            old = previous.get(row[0])
            if old is not None and old[0] == row:
                found[row[0]] = old
            else:
                changed.append(row)
    for lo in range(0, len(changed), _CHUNK):
        rows = {row[0]: row for row in changed[lo : lo + _CHUNK]}
        held: dict[int, list[_Holder]] = {i: [] for i in rows}
        models = EndpointModel.objects.filter(endpoint_id__in=list(rows)).values_list(*_MODEL_VALUES)
        for endpoint_id, name, loaded, size, size_vram in models:
            _, _, _, status, latency, host_name, address, port, label, scheme = rows[endpoint_id]
            held[endpoint_id].append(
                _Holder(
                    name,
                    endpoint_id,
                    host_name,
                    label,
                    Endpoint.url_for(address, port, scheme),
                    status == Endpoint.Status.HEALTHY,
                    latency,
                    loaded,
                    size,
                    size_vram,
                )  # fmt: skip
            )
        found.update((i, (tuple(rows[i]), held[i])) for i in rows)
    return found


def _free(used, total) -> int | None:
    if total is None or used is None:
        return None
    return max(0, int(total) - int(used))


def _datetime(value) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(value)  # SQLite may hand back text
    return value if value.tzinfo else value.replace(tzinfo=UTC)  # stored in UTC (USE_TZ)


def _host_state(raw_at, cpu, used, total, gpus) -> _HostState:
    if isinstance(gpus, str | bytes):
        gpus = orjson.loads(gpus)
    per_gpu = [
        f
        for g in gpus or []
        if isinstance(g, dict) and (f := _free(g.get("memory_used_bytes"), g.get("memory_total_bytes"))) is not None
    ]
    vram_free = _free(used, total)
    return _HostState(raw_at, _datetime(raw_at), cpu, vram_free, max(per_gpu) if per_gpu else vram_free)


def _read_hosts(previous: dict[str, _HostState]) -> dict[str, _HostState]:
    """Host name -> resources: one narrow query for the report times, the resources only of hosts
    that reported since `previous` (at 1,000 hosts reporting every 10 s, ~100 a second)."""
    table = connection.ops.quote_name(Host._meta.db_table)
    hosts, changed = {}, []
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT name, last_report_at FROM {table} WHERE last_report_at IS NOT NULL")  # noqa: S608
        for name, at in cursor.fetchall():
            old = previous.get(name)
            if old is not None and old.raw_at == at:
                hosts[name] = old
            else:
                changed.append(name)
        for lo in range(0, len(changed), _CHUNK):
            names = changed[lo : lo + _CHUNK]
            cursor.execute(
                f"SELECT name, last_report_at, cpu_percent, vram_used_bytes, vram_total_bytes, gpus FROM {table} "  # noqa: S608
                f"WHERE name IN ({', '.join(['%s'] * len(names))}) AND last_report_at IS NOT NULL",
                names,
            )
            for name, at, cpu, used, total, gpus in cursor.fetchall():
                hosts[name] = _host_state(at, cpu, used, total, gpus)
    return hosts


def _fresh(index: _Index | None) -> bool:
    return index is not None and not _dirty and time.monotonic() - index.checked < settings.ROUTE_CACHE_SECONDS


def fresh_index() -> _Index | None:
    """The index when it needs no database read (the event loop's fast path), else None."""
    index = _index
    return index if _fresh(index) else None


def _current(*, rank_again: bool = False) -> _Index:
    """The index, read again when older than ROUTE_CACHE_SECONDS or dropped by a change here;
    `rank_again`: rank the models the old index had ranked before publishing the new one."""
    global _index, _dirty
    index = _index
    if _fresh(index):
        return index
    with _lock:
        index = _index
        if _fresh(index):
            return index  # another thread read it while this one waited
        _dirty = False  # before reading: a change committed during the read marks it again
        checked, built_at = time.monotonic(), timezone.now()
        mark = _endpoint_mark()
        if index is not None and index.mark == mark:
            endpoints, holders = index.endpoints, index.holders
        else:
            endpoints = _read_endpoints(index.endpoints if index is not None else {})
            holders = {}
            for _, held in endpoints.values():
                for h in held:
                    holders.setdefault(h.model, []).append(h)
        hosts = _read_hosts(index.hosts if index is not None else {})
        fresh = _Index(mark, endpoints, holders, hosts, built_at, checked)
        for model in list(index.ranked) if index is not None and rank_again else ():
            if model in holders:
                _ranked(fresh, model)  # before it is published: the fast path answers these at once
        _index = fresh
        return fresh


_FIT_RANK = {True: 0, False: 1, None: 2}


def _fits(h: _Holder, res: _HostState | None, known: bool) -> bool | None:
    if h.loaded:
        return None if h.size_vram is None else h.size_vram > 0  # Ollama put it in VRAM (or on the CPU)
    if not known:
        return None  # numbers too old to judge
    return res.gpu_free is not None and res.gpu_free >= h.size


def _ranked(index: _Index, model: str) -> list[list[tuple[_Holder, _HostState | None]]]:
    """Groups of equal candidates, best group first (computed once per index and model).

    The key: loaded first; then hosts whose resources are current before stale or missing
    ones; then a GPU it fits before none; then more free VRAM on the host, in whole GiB (hosts a
    few MiB apart are equal, and share the load)."""
    groups = index.ranked.get(model)
    if groups is not None:
        return groups
    fresh_after = index.built_at - timedelta(seconds=settings.STALE_AFTER_SECONDS)
    if index.host_keys is None:  # per host once per index, not per holder: (stale, GPU free, -GiB free)
        index.host_keys = {
            name: (0, -1 if res.gpu_free is None else res.gpu_free, -((res.vram_free or 0) // GiB))
            if res.reported_at is not None and res.reported_at >= fresh_after
            else (1, -1, 0)
            for name, res in index.hosts.items()
        }
    host_keys, hosts, missing = index.host_keys, index.hosts, (1, -1, 0)
    scored = []
    for h in index.holders[model]:
        if not h.healthy:
            continue
        stale, gpu_free, free_gib = host_keys.get(h.host, missing)
        if h.loaded:
            fit = 2 if h.size_vram is None else 0 if h.size_vram > 0 else 1
        else:
            fit = 2 if stale else 0 if gpu_free >= h.size else 1
        scored.append(((not h.loaded, stale, fit, free_gib), h.id, h, hosts.get(h.host)))
    scored.sort()  # by key, then id (unique: the holders themselves are never compared)
    groups, last = [], None
    for key, _, h, res in scored:
        if key != last:
            groups.append([])
            last = key
        groups[-1].append((h, res))
    index.ranked[model] = groups
    return groups


def _why(h: _Holder, res: _HostState | None, fresh_after: datetime) -> dict:
    known = res is not None and res.reported_at is not None and res.reported_at >= fresh_after
    return {
        "loaded": h.loaded,
        "fits": _fits(h, res, known),
        "model_bytes": h.size_vram if h.loaded and h.size_vram is not None else h.size,
        "vram_free_bytes": res.vram_free if known else None,
        "gpu_free_bytes": res.gpu_free if known else None,
        "cpu_percent": res.cpu_percent if known else None,
        "resources": "none" if res is None else "fresh" if known else "stale",
        "reported_at": res.reported_at.isoformat() if res is not None and res.reported_at else None,
        "latency_ms": h.latency_ms,
    }


def resolve_model(names, model: str) -> str | None:
    """The name a request means: exact, and a name without a tag means its `:latest`."""
    if ":" in model:
        return model if model in names else None
    for name in (f"{model}:latest", model):
        if name in names:
            return name
    return None


def answer(index: _Index, model: str, n: int) -> dict:
    """The reply for `model` from `index` (see route)."""
    name = resolve_model(index.holders, model)
    if name is None:
        raise ModelNotHeld(model, fleet_model_names(index))
    groups = _ranked(index, name)
    if not groups:
        raise NoHealthyHolder(name, len(index.holders[name]))
    chosen: list[tuple[_Holder, _HostState | None]] = []
    for group in groups:
        take = min(len(group), n - len(chosen))
        # Equal candidates in a random order: agents asking at once spread over them.
        chosen.extend(group if len(group) == 1 else random.sample(group, take))
        if len(chosen) >= n:
            break
    fresh_after = index.built_at - timedelta(seconds=settings.STALE_AFTER_SECONDS)
    return {
        "model": name,
        "candidates": sum(len(g) for g in groups),
        "as_of": index.built_at.isoformat(),
        "routes": [
            {"rank": i, "id": h.id, "url": h.url, "host": h.host, "name": h.name, "why": _why(h, res, fresh_after)}
            for i, (h, res) in enumerate(chosen, 1)
        ],
    }


def route(model: str, n: int = 3) -> dict:
    """The best `n` healthy endpoints for `model`, ranked, each with why (see the README)."""
    if not 1 <= n <= MAX_ROUTES:
        raise RegistryError("invalid_input", f"n must be from 1 to {MAX_ROUTES}.")
    if not model:
        raise RegistryError("invalid_input", "model is required.")
    return answer(_current(), model, n)


def ready_route(model: str, n: int) -> dict | None:
    """route() when the answer needs no database read and no ranking work, else None: for the
    event loop's fast path, which must never wait on the database.

    An index older than ROUTE_CACHE_SECONDS is read again in a thread of its own while this
    one still answers (for at most another ROUTE_CACHE_SECONDS, capped at 2 s): requests that
    arrive during a read do not queue behind it."""
    index = _index
    ttl = settings.ROUTE_CACHE_SECONDS
    if index is None or _dirty or not 1 <= n <= MAX_ROUTES:
        return None
    age = time.monotonic() - index.checked
    if age >= ttl:
        refresh_in_background()
        if age >= ttl + min(ttl, 2.0):
            return None
    name = resolve_model(index.holders, model)
    if name is None or not index.ranked.get(name):
        return None
    return answer(index, name, n)


_refresher: threading.Thread | None = None
_refresher_lock = threading.Lock()
_refresh_wanted = threading.Event()


def refresh_in_background() -> None:
    """Have the index read again by this process's refresher thread (started on first use)."""
    global _refresher
    _refresh_wanted.set()
    if _refresher is None or not _refresher.is_alive():
        with _refresher_lock:
            if _refresher is None or not _refresher.is_alive():
                _refresher = threading.Thread(target=_refresh_loop, name="route-index", daemon=True)
                _refresher.start()


def _refresh_loop() -> None:
    # One long-lived thread keeps its database connection: a new thread (and connection) per
    # read cost more than the read itself.
    while True:
        _refresh_wanted.wait()
        _refresh_wanted.clear()
        try:
            if not _fresh(_index):
                _current(rank_again=True)
        except Exception:
            logger.exception("could not read the routing index")
            connection.close()  # the next read starts on a fresh connection


def fleet_model_names(index: _Index | None = None) -> list[str]:
    """Names of the models held by at least one healthy endpoint, sorted."""
    index = index or _current()
    return sorted(name for name, holders in index.holders.items() if any(h.healthy for h in holders))
