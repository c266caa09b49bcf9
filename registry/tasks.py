"""Celery tasks: thin wrappers that take ids and call registry.services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from registry import ollama, services
from registry.models import Endpoint

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def probe_sweep() -> int:
    """Split the fleet into chunks and queue one probe task per chunk; return the chunk count.

    Chunks let several workers (on several machines) share one sweep; each chunk task
    leases its endpoints, so two sweeps never probe the same endpoint at once.
    """
    ids = list(Endpoint.objects.order_by("id").values_list("id", flat=True))
    size = settings.PROBE_CHUNK_SIZE
    chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
    for chunk in chunks:
        probe_endpoints.apply_async(args=[chunk], expires=settings.PROBE_INTERVAL_SECONDS)
    return len(chunks)


@shared_task(ignore_result=True)
def probe_endpoints(ids: list[int]) -> list[int]:
    """Probe the given endpoints concurrently and record the results; return the changed ids."""
    return run_probes(ids)


def run_probes(ids: list[int] | None) -> list[int]:
    """Lease, probe and record endpoints (all when ids is None); used by tasks and commands."""
    claim, targets = services.claim_for_probe(ids)
    try:
        if not targets:
            return []
        results = ollama.probe_many_sync(
            targets, timeout=settings.PROBE_TIMEOUT_SECONDS, allowed=services.allowed_networks()
        )
        return services.record_probe_results(results)
    except Exception:
        logger.exception("probe run over %d endpoints failed", len(targets))
        return []
    finally:
        services.release_claim(claim)


@shared_task(ignore_result=True)
def prune_history() -> int:
    """Delete resource reports older than RESOURCE_RETENTION_HOURS."""
    deleted = services.prune_snapshots()
    if deleted:
        logger.info("pruned %d resource snapshots", deleted)
    return deleted
