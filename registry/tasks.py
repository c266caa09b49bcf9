"""Celery tasks: thin wrappers that take ids and call registry.services."""

from __future__ import annotations

import logging
import secrets

from celery import shared_task
from django.conf import settings

from registry import metrics, services

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def probe_sweep() -> int:
    """Queue one probe task per chunk of the fleet; return the chunk count.

    Chunks let several workers (on several machines) share one sweep; each chunk task
    leases its endpoints, so two sweeps never probe the same endpoint at once.
    """
    chunks = services.sweep_chunks()
    sweep = secrets.token_hex(8)
    try:  # the sweep's duration is measured from here to its last chunk's end, whichever worker runs it
        metrics.sweep_started(sweep, len(chunks))
    except Exception:  # metrics must never stop a sweep
        logger.warning("could not note the sweep's start for /metrics", exc_info=True)
        sweep = None
    for chunk in chunks:
        probe_endpoints.apply_async(args=[chunk], kwargs={"sweep": sweep}, expires=settings.PROBE_INTERVAL_SECONDS)
    return len(chunks)


@shared_task(ignore_result=True)
def probe_endpoints(ids: list[int], sweep: str | None = None) -> list[int]:
    """Probe the given endpoints concurrently and record the results; return the changed ids."""
    try:
        return services.probe(ids)
    except Exception:  # a task boundary: log, and let the next sweep try again
        logger.exception("probe run over %d endpoints failed", len(ids))
        return []
    finally:
        if sweep:
            _chunk_done(sweep)


def _chunk_done(sweep: str) -> None:
    try:
        metrics.sweep_chunk_done(sweep)
    except Exception:
        logger.warning("could not note a sweep chunk's end for /metrics", exc_info=True)


@shared_task(ignore_result=True)
def prune_history() -> int:
    """Delete resource reports older than RESOURCE_RETENTION_HOURS."""
    deleted = services.prune_snapshots()
    if deleted:
        logger.info("pruned %d resource snapshots", deleted)
    return deleted
