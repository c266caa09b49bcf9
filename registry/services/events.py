"""Events: what happened in the fleet (status changes, models, registrations, silent sidecars).

Services record events in the same transaction as the change they describe, with
`record_events`; receivers of `signals.events_recorded` (alerts, the page) act on commit.
Details by kind: status {"from", "to", "reason"}; model_* {"model"}; registered and removed
{"by"}; host_silent {"last_report_at", "silent_for"}; host_back {"last_report_at" (the report
before the silence), "silent_for" (seconds)}.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from registry import signals
from registry.models import Event, Host
from registry.schemas import host_for_url


def record_events(events: Iterable[Event]) -> list[Event]:
    """Save the given (unsaved) events in one INSERT and announce them; return them saved."""
    events = list(events)
    if not events:
        return []
    saved = Event.objects.bulk_create(events)  # ids set: SQLite 3.35+ and PostgreSQL return them
    signals.events_recorded.send(sender=Event, events=saved)
    return saved


def endpoint_label(name: str, address: str, port: int) -> str:
    """How people know an endpoint: `"rack 3" (10.0.0.5:11434)`, or `10.0.0.5:11434` unnamed."""
    where = f"{host_for_url(address)}:{port}"
    return f'"{name}" ({where})' if name else where


def endpoint_event(kind: str, endpoint, *, host: str, at: datetime | None = None, **detail) -> Event:
    """An unsaved event about `endpoint` (anything with id, name, address, port) on machine `host`."""
    return Event(
        at=at or timezone.now(),
        kind=kind,
        endpoint_id=endpoint.id,
        endpoint_label=endpoint_label(endpoint.name, endpoint.address, endpoint.port)[:260],
        host=host,
        detail=detail,
    )


def status_event(endpoint, old: str, new: str, reason: str, *, host: str, at: datetime) -> Event:
    return endpoint_event(Event.Kind.STATUS, endpoint, host=host, at=at, **{"from": old, "to": new, "reason": reason})


# --- sidecars going silent and coming back -------------------------------------------------


def mark_silent_hosts(*, now: datetime | None = None) -> list[Event]:
    """Record host_silent once for every host whose sidecar passed STALE_AFTER_SECONDS without a
    report (the mark, Host.silent_since, is cleared by its next report, which records host_back).

    Compare-and-set: the UPDATE repeats the conditions, so a report that lands meanwhile wins
    and no host is marked twice by two beats; the hosts marked are those carrying this `now`.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.STALE_AFTER_SECONDS)
    silent = Host.objects.filter(silent_since__isnull=True, last_report_at__lt=cutoff)
    with transaction.atomic():
        found = list(silent.values_list("id", flat=True))
        if not found:
            return []
        Host.objects.filter(id__in=found, silent_since__isnull=True, last_report_at__lt=cutoff).update(silent_since=now)
        marked = Host.objects.filter(id__in=found, silent_since=now).values_list("name", "last_report_at")
        return record_events(
            Event(
                at=now,
                kind=Event.Kind.HOST_SILENT,
                host=name,
                detail={"last_report_at": last.isoformat(), "silent_for": round((now - last).total_seconds())},
            )
            for name, last in marked
        )


def host_back_event(name: str, silent_since: datetime, last_report_at: datetime | None, now: datetime) -> Event:
    """host_back for a host marked silent at `silent_since` whose report arrived at `now`."""
    since = last_report_at or silent_since
    return Event(
        at=now,
        kind=Event.Kind.HOST_BACK,
        host=name,
        detail={
            "last_report_at": since.isoformat(),
            "silent_for": round((now - since).total_seconds()),
        },
    )


# --- retention ------------------------------------------------------------------------------


def prune_events(*, now: datetime | None = None) -> int:
    """Delete events older than EVENT_RETENTION_DAYS."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.EVENT_RETENTION_DAYS)
    deleted, _ = Event.objects.filter(at__lt=cutoff).delete()
    return deleted
