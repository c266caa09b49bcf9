"""Plain-dict views of registry rows, shared by the REST API, the snapshot and the dashboard."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.db.models import BooleanField, Exists, ExpressionWrapper, F, OuterRef, Q, QuerySet
from django.utils import timezone

from registry.models import Endpoint, EndpointModel, Host
from registry.status import is_stale
from registry.uptime import uptimes


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


_ENDPOINT_COLUMNS = (
    "id",
    "address",
    "port",
    "scheme",
    "name",
    "source",
    "status",
    "last_error",
    "consecutive_failures",
    "latency_ms",
    "version",
    "last_checked_at",
    "registered_at",
    "revision",
)
_MODEL_COLUMNS = ("endpoint_id", "name", *EndpointModel.DETAIL_FIELDS)

# An endpoint's model list, by (id, revision, registered_at). Every change to an endpoint's
# models bumps its revision in the same transaction (services.probing._record_one), so a key never
# names two different lists; registered_at tells apart two endpoints that reused an id
# (SQLite hands out ids again after a rollback). The model rows are 10 of every 11 rows a
# snapshot reads: cached, a snapshot of 1,000 endpoints reads 1,000 rows, not 11,000.
_models_cache: dict[tuple, list[dict]] = {}
_models_lock = threading.Lock()
MODELS_CACHE_MAX = 50_000


def _model_lists(keys: dict[int, tuple], *, complete: bool) -> dict[int, list[dict]]:
    """Model lists for endpoint id -> cache key, reading only the missing ones (one query)."""
    cache = _models_cache
    found = {i: cache[k] for i, k in keys.items() if k in cache}
    missing = [i for i in keys if i not in found]
    if missing:
        fresh: dict[int, list[dict]] = {i: [] for i in missing}
        models = (
            EndpointModel.objects.all()
            if complete and not found
            else EndpointModel.objects.filter(endpoint_id__in=missing)
        )
        for m in models.values(*_MODEL_COLUMNS):
            m["modified_at"], m["expires_at"] = _iso(m["modified_at"]), _iso(m["expires_at"])
            fresh.setdefault(m.pop("endpoint_id"), []).append(m)
        with _models_lock:
            if complete or len(cache) > MODELS_CACHE_MAX:
                # A full read knows every live key: drop the rest (removed endpoints, old revisions).
                live = set(keys.values())
                for key in [k for k in cache if k not in live]:
                    del cache[key]
            for i in missing:
                cache[keys[i]] = found[i] = fresh.get(i, [])
    return found


def forget_cached_models() -> None:
    """Empty the model-list cache (tests that rewrite model rows behind the services' back)."""
    with _models_lock:
        _models_cache.clear()


def filter_endpoints(qs: QuerySet, *, status: str = "", model: str = "", q: str = "") -> QuerySet:
    """Endpoints matching the dashboard's and the REST API's filters (each optional).

    status: one of the statuses; model: holds a model of exactly that name (or that name
    without a tag: "llama3" matches "llama3:8b"); q: a case-insensitive piece of the host,
    the address, the name or a model's name.
    """
    if status:
        qs = qs.filter(status=status)
    if model:
        held = EndpointModel.objects.filter(endpoint=OuterRef("pk")).filter(
            Q(name=model) | Q(name__startswith=f"{model}:")
        )
        qs = qs.filter(Exists(held))
    if q:
        named = EndpointModel.objects.filter(endpoint=OuterRef("pk"), name__icontains=q)
        qs = qs.filter(Q(host__name__icontains=q) | Q(address__icontains=q) | Q(name__icontains=q) | Q(Exists(named)))
    return qs


# Whether an Authorization header is stored, computed in SQL: the secret itself is never read here.
_HAS_AUTH = ExpressionWrapper(~Q(authorization=""), output_field=BooleanField())


def endpoint_rows(ids: Iterable[int] | None = None, *, endpoints: QuerySet | None = None) -> list[dict]:
    """Endpoints as the API and the dashboard show them (registry.wire.EndpointRow).

    Plain values, no model instances, three queries at most (one when every model list and
    uptime is cached): a snapshot of thousands of rows is built on every dashboard connect. `endpoints`
    narrows the rows (a filtered, ordered or sliced queryset); `ids` picks them by id.
    """
    complete = ids is None and endpoints is None
    qs = Endpoint.objects.all() if endpoints is None else endpoints
    if ids is not None:
        qs = qs.filter(id__in=list(ids))
    values = list(qs.values(*_ENDPOINT_COLUMNS, host_name=F("host__name"), has_auth=_HAS_AUTH))
    keys = {e["id"]: (e["id"], e["revision"], e["registered_at"]) for e in values}
    models = _model_lists(keys, complete=complete)
    ups = uptimes(((e["id"], e["status"], e["registered_at"]) for e in values), timezone.now(), complete=complete)
    return [
        {
            "id": e["id"],
            "host": e["host_name"],
            "address": e["address"],
            "port": e["port"],
            "scheme": e["scheme"],
            "has_auth": e["has_auth"],
            "name": e["name"],
            "url": Endpoint.url_for(e["address"], e["port"], e["scheme"]),
            "source": e["source"],
            "status": e["status"],
            "last_error": e["last_error"],
            "consecutive_failures": e["consecutive_failures"],
            "latency_ms": e["latency_ms"],
            "version": e["version"],
            "last_checked_at": _iso(e["last_checked_at"]),
            "registered_at": _iso(e["registered_at"]),
            "revision": e["revision"],
            "models": models[e["id"]],
            "uptime_24h": ups[e["id"]][0],
            "uptime_7d": ups[e["id"]][1],
        }
        for e in values
    ]


# --- the dashboard's default order ------------------------------------------------------

_STATUS_RANK = {Endpoint.Status.UNHEALTHY: 0, Endpoint.Status.UNKNOWN: 1, Endpoint.Status.HEALTHY: 2}
_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Order names and addresses as people read them: 127.0.10.2 before 127.0.10.100, gpu-9 before gpu-10.

    Parts are (is a number, value) pairs, so a number and a word at one position compare
    without a TypeError.
    """
    return tuple((p.isdigit(), int(p) if p.isdigit() else p) for p in _DIGITS.split(text.lower()) if p)


def ids_problems_first() -> list[int]:
    """Every endpoint id in the dashboard's default order, from one narrow query (no models)."""
    values = Endpoint.objects.values_list("id", "status", "host__name", "port")
    ordered = sorted(values, key=lambda v: (_STATUS_RANK.get(v[1], 1), natural_key(v[2]), v[3]))
    return [v[0] for v in ordered]


def problems_first(rows: list[dict]) -> list[dict]:
    """Rows in the dashboard's default order: unhealthy, then unknown, then healthy; by host within."""

    return sorted(rows, key=lambda r: (_STATUS_RANK.get(r["status"], 1), natural_key(r["host"]), r["port"]))


RESOURCE_FIELDS = ("name", "hostname", *Host.RESOURCE_FIELDS, "last_report_at")


def resources_row(host: dict, now: datetime) -> dict:
    """A host's latest resources from its RESOURCE_FIELDS values (the host has reported)."""
    return {
        "host": host["name"],
        "hostname": host["hostname"],
        "cpu_percent": host["cpu_percent"],
        "ram_used_bytes": host["ram_used_bytes"],
        "ram_total_bytes": host["ram_total_bytes"],
        "vram_used_bytes": host["vram_used_bytes"],
        "vram_total_bytes": host["vram_total_bytes"],
        "gpus": host["gpus"],
        "reported_at": _iso(host["last_report_at"]),
        "stale": is_stale(host["last_report_at"], now, settings.STALE_AFTER_SECONDS),
    }
