"""Events: what happened in the fleet (status changes, models, registrations, silent sidecars).

Services record events in the same transaction as the change they describe, with
`record_events`; receivers of `signals.events_recorded` (alerts, the page) act on commit.
Details by kind: status {"from", "to", "reason"}; model_* {"model"}; registered and removed
{"by"}; host_silent {"last_report_at", "silent_for"}; host_back {"last_report_at" (the report
before the silence), "silent_for" (seconds)}.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from registry import signals
from registry.models import Endpoint, Event, Host
from registry.schemas import host_for_url
from registry.services.common import RegistryError


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


# --- reading ------------------------------------------------------------------------------

MAX_EVENTS_PAGE = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which events a reader wants (each filter optional), newest first, a page at a time.

    `with_host`: with `endpoint`, also the events of its machine that name no endpoint (its
    sidecar going silent and coming back). `cursor`: the `next` of the page before.
    """

    endpoint: int | None = None
    host: str = ""
    kind: str = ""
    since: datetime | None = None
    cursor: str = ""
    limit: int = 100
    with_host: bool = False

    def __post_init__(self) -> None:
        if self.kind and self.kind not in Event.Kind.values:
            raise RegistryError("invalid_input", f"kind must be one of {', '.join(Event.Kind.values)}.")
        if not 1 <= self.limit <= MAX_EVENTS_PAGE:
            raise RegistryError("invalid_input", f"limit must be from 1 to {MAX_EVENTS_PAGE}.")
        _parse_cursor(self.cursor)


def _parse_cursor(cursor: str) -> tuple[datetime, int] | None:
    """The (at, id) a cursor "<microseconds since 1970>-<id>" names; None for no cursor."""
    if not cursor:
        return None
    micros, _, event_id = cursor.partition("-")
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), int(event_id)
    except (ValueError, OverflowError):
        raise RegistryError(
            "invalid_input", "cursor is not one this hub handed out (use the `next` of a page)."
        ) from None


def _cursor(event: dict) -> str:
    delta = event["at"] - _EPOCH
    return f"{(delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds}-{event['id']}"


def _aware(value: datetime) -> datetime:
    """A time to compare with (naive means UTC), clamped to what the database can store."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # year 1 minus an offset, year 9999 plus one
        return datetime.min.replace(tzinfo=UTC) if value.year < 2 else datetime.max.replace(tzinfo=UTC)


_EVENT_COLUMNS = ("id", "at", "kind", "endpoint_id", "endpoint_label", "host", "detail")


def find_events(query: EventQuery) -> dict:
    """One page of events, newest first: {"events": [...], "next": cursor of the next page or None}
    (registry.wire.EventPage)."""
    qs = Event.objects.all()
    if query.endpoint is not None:
        mine = Q(endpoint_id=query.endpoint)
        if query.with_host:
            machine = Endpoint.objects.filter(id=query.endpoint).values_list("host__name", flat=True).first()
            if machine is not None:
                mine |= Q(host=machine, endpoint_id__isnull=True)
        qs = qs.filter(mine)
    if query.host:
        qs = qs.filter(host=query.host)
    if query.kind:
        qs = qs.filter(kind=query.kind)
    if query.since is not None:
        qs = qs.filter(at__gte=_aware(query.since))
    after = _parse_cursor(query.cursor)
    if after is not None:
        qs = qs.filter(Q(at__lt=after[0]) | Q(at=after[0], id__lt=after[1]))
    rows = list(qs.order_by("-at", "-id").values(*_EVENT_COLUMNS)[: query.limit + 1])
    following = _cursor(rows[query.limit - 1]) if len(rows) > query.limit else None
    rows = rows[: query.limit]
    for row in rows:
        row["at"] = row["at"].isoformat()
    return {"events": rows, "next": following}
