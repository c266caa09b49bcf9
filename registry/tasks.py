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
    """Queue one probe task per chunk of the fleet, spread over the interval; return the chunk count.

    Chunks let several workers (on several machines) share one sweep; each chunk task
    leases its endpoints, so two sweeps never probe the same endpoint at once.
    """
    plan = services.sweep_plan()
    sweep = secrets.token_hex(8)
    try:  # the sweep's duration is measured from here to its last chunk's end, whichever worker runs it
        metrics.sweep_started(sweep, len(plan))
    except Exception:  # metrics must never stop a sweep
        logger.warning("could not note the sweep's start for /metrics", exc_info=True)
        sweep = None
    for delay, chunk in plan:
        probe_endpoints.apply_async(
            args=[chunk], kwargs={"sweep": sweep}, countdown=delay, expires=delay + settings.PROBE_INTERVAL_SECONDS
        )
    return len(plan)


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
def roll_up_history() -> int:
    """Turn closed 15-minute buckets of raw history into min/avg/max aggregates."""
    return services.roll_up()


@shared_task(ignore_result=True)
def prune_history() -> int:
    """Roll up, then delete history past RESOURCE_RETENTION_HOURS (raw) and HISTORY_RETENTION_DAYS,
    and events older than EVENT_RETENTION_DAYS."""
    deleted = services.prune_history()
    if deleted:
        logger.info("pruned %d history rows", deleted)
    events = services.prune_events()
    if events:
        logger.info("pruned %d events", events)
    return deleted + events


@shared_task(ignore_result=True)
def find_silent_hosts() -> int:
    """Record host_silent for sidecars silent past STALE_AFTER_SECONDS; return how many."""
    return len(services.mark_silent_hosts())


@shared_task(ignore_result=True)
def process_alerts(older_than_seconds: float = 0.0) -> int:
    """Turn pending status events into grouped alerts and queue their deliveries."""
    try:
        return len(services.process_alerts(older_than_seconds=older_than_seconds))
    except Exception:  # a task boundary: the events stay pending; the alert sweep tries again
        logger.exception("alert processing failed")
        return 0


@shared_task(ignore_result=True)
def alert_sweep() -> int:
    """Catch up on lost tasks (events, deliveries), flapping endpoints now stable; prune old alerts."""
    processed = process_alerts(older_than_seconds=settings.ALERT_GROUP_SECONDS)
    services.requeue_stalled_deliveries()
    pruned = services.prune_alerts()
    if pruned:
        logger.info("pruned %d alerts", pruned)
    return processed


@shared_task(
    bind=True,
    ignore_result=True,
    autoretry_for=(services.DeliveryFailed,),
    max_retries=settings.ALERT_MAX_ATTEMPTS - 1,
    # 2, 4, 8, ... s with full jitter, at most 5 min: a retry waits in the broker, not in the pool.
    retry_backoff=2,
    retry_backoff_max=300,
    retry_jitter=True,
)
def send_alert(self, delivery_id: int) -> str:
    """Send one alert to one target; a failure is retried by Celery with backoff."""
    return services.deliver(delivery_id, final=self.request.retries >= self.max_retries)
