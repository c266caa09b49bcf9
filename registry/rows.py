"""Plain-dict views of registry rows, shared by the REST API, the snapshot and the dashboard."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings

from registry.models import Endpoint
from registry.status import is_stale


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def endpoint_row(endpoint: Endpoint) -> dict:
    """One endpoint as the API and the dashboard show it (models must be prefetched)."""
    return {
        "id": endpoint.id,
        "host": endpoint.host.name,
        "address": endpoint.address,
        "port": endpoint.port,
        "name": endpoint.name,
        "url": endpoint.url,
        "source": endpoint.source,
        "status": endpoint.status,
        "last_error": endpoint.last_error,
        "consecutive_failures": endpoint.consecutive_failures,
        "latency_ms": endpoint.latency_ms,
        "version": endpoint.version,
        "last_checked_at": _iso(endpoint.last_checked_at),
        "registered_at": _iso(endpoint.registered_at),
        "revision": endpoint.revision,
        "models": [
            {
                "name": m.name,
                "digest": m.digest,
                "size": m.size,
                "family": m.family,
                "parameter_size": m.parameter_size,
                "quantization": m.quantization,
                "modified_at": _iso(m.modified_at),
                "loaded": m.loaded,
                "size_vram": m.size_vram,
                "expires_at": _iso(m.expires_at),
            }
            for m in endpoint.models.all()
        ],
    }


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
