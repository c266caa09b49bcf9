"""Plain-dict views of registry rows, shared by the REST API, the snapshot and the dashboard."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings

from registry.models import Endpoint, Host
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


def resources_row(host: Host, now: datetime) -> dict | None:
    """A host's latest resources (latest_snapshot selected), or None if it never reported."""
    snap = host.latest_snapshot
    if snap is None:
        return None
    return {
        "host": host.name,
        "hostname": host.hostname,
        "cpu_percent": snap.cpu_percent,
        "ram_used_bytes": snap.ram_used_bytes,
        "ram_total_bytes": snap.ram_total_bytes,
        "vram_used_bytes": snap.vram_used_bytes,
        "vram_total_bytes": snap.vram_total_bytes,
        "gpus": snap.gpus,
        "reported_at": _iso(snap.reported_at),
        "stale": is_stale(snap.reported_at, now, settings.STALE_AFTER_SECONDS),
    }
