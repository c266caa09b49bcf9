"""Celery tasks: thin wrappers that take ids and call registry.services."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from registry import services

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def probe_sweep() -> int:
    """Queue one probe task per chunk of the fleet; return the chunk count.

    Chunks let several workers (on several machines) share one sweep; each chunk task
    leases its endpoints, so two sweeps never probe the same endpoint at once.
    """
    chunks = services.sweep_chunks()
    for chunk in chunks:
        probe_endpoints.apply_async(args=[chunk], expires=settings.PROBE_INTERVAL_SECONDS)
    return len(chunks)


@shared_task(ignore_result=True)
def probe_endpoints(ids: list[int]) -> list[int]:
    """Probe the given endpoints concurrently and record the results; return the changed ids."""
    try:
        return services.probe(ids)
    except Exception:  # a task boundary: log, and let the next sweep try again
        logger.exception("probe run over %d endpoints failed", len(ids))
        return []


@shared_task(ignore_result=True)
def roll_up_history() -> int:
    """Turn closed 15-minute buckets of raw history into min/avg/max aggregates."""
    return services.roll_up()


@shared_task(ignore_result=True)
def prune_history() -> int:
    """Roll up, then delete history past RESOURCE_RETENTION_HOURS (raw) and HISTORY_RETENTION_DAYS."""
    deleted = services.prune_history()
    if deleted:
        logger.info("pruned %d history rows", deleted)
    return deleted
