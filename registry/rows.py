"""Plain-dict views of registry rows, shared by the REST API, the snapshot and the dashboard."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.db.models import F

from registry.models import Endpoint, EndpointModel
from registry.status import is_stale


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


_ENDPOINT_COLUMNS = (
    "id",
    "address",
    "port",
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
_MODEL_COLUMNS = (
    "endpoint_id",
    "name",
    "digest",
    "size",
    "family",
    "parameter_size",
    "quantization",
    "modified_at",
    "loaded",
    "size_vram",
    "expires_at",
)


def endpoint_rows(ids: Iterable[int] | None = None) -> list[dict]:
    """Endpoints as the API and the dashboard show them (registry.wire.EndpointRow), in two queries.

    Plain values, no model instances: a snapshot of thousands of rows is built on every
    dashboard connect.
    """
    endpoints = Endpoint.objects.all()
    models = EndpointModel.objects.all()
    if ids is not None:
        ids = list(ids)
        endpoints, models = endpoints.filter(id__in=ids), models.filter(endpoint_id__in=ids)
    by_endpoint: dict[int, list[dict]] = {}
    for m in models.values(*_MODEL_COLUMNS):
        m["modified_at"], m["expires_at"] = _iso(m["modified_at"]), _iso(m["expires_at"])
        by_endpoint.setdefault(m.pop("endpoint_id"), []).append(m)
    return [
        {
            "id": e["id"],
            "host": e["host_name"],
            "address": e["address"],
            "port": e["port"],
            "name": e["name"],
            "url": Endpoint.url_for(e["address"], e["port"]),
            "source": e["source"],
            "status": e["status"],
            "last_error": e["last_error"],
            "consecutive_failures": e["consecutive_failures"],
            "latency_ms": e["latency_ms"],
            "version": e["version"],
            "last_checked_at": _iso(e["last_checked_at"]),
            "registered_at": _iso(e["registered_at"]),
            "revision": e["revision"],
            "models": by_endpoint.get(e["id"], []),
        }
        for e in endpoints.values(*_ENDPOINT_COLUMNS, host_name=F("host__name"))
    ]


RESOURCE_FIELDS = (
    "name",
    "hostname",
    "cpu_percent",
    "ram_used_bytes",
    "ram_total_bytes",
    "vram_used_bytes",
    "vram_total_bytes",
    "gpus",
    "last_report_at",
)


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
