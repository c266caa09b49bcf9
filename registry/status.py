"""Status rules as pure functions of their inputs (and of `now`)."""

from __future__ import annotations

from datetime import datetime, timedelta

from registry.models import Endpoint

Status = Endpoint.Status  # the one list of status strings


def next_status(status: str, failures: int, ok: bool, unhealthy_after: int) -> tuple[str, int]:
    """Return (status, consecutive_failures) after one probe.

    A success makes the endpoint healthy at once. Failures count up; the endpoint turns
    unhealthy at `unhealthy_after` consecutive failures and keeps its previous status
    (unknown or healthy) before that.
    """
    if ok:
        return Status.HEALTHY, 0
    failures += 1
    if failures >= unhealthy_after:
        return Status.UNHEALTHY, failures
    return status, failures


def is_stale(reported_at: datetime | None, now: datetime, stale_after_seconds: float) -> bool:
    """Whether a host's last report is too old to show its numbers."""
    return reported_at is None or now - reported_at > timedelta(seconds=stale_after_seconds)
