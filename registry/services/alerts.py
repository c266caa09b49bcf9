"""Alerts: turn status events into debounced, grouped messages and deliver each once per target.

1. `note_alert_events` (a receiver of signals.events_recorded, inside the recording
   transaction) keeps alert-worthy events in AlertPending and, on commit, queues
   processing ALERT_GROUP_SECONDS later.
2. `process_alerts` takes every pending event at once: an endpoint with
   ALERT_FLAP_TRANSITIONS status changes within ALERT_FLAP_WINDOW_SECONDS is reported as
   flapping once and then kept quiet until it has been stable that long (the periodic
   alert sweep notices that, within a minute, and says "stable again"); the other
   transitions are grouped per host and kind (one message for a host whose endpoints all
   went down). Alerts, their deliveries and the removal of the pending rows commit together.
3. `deliver` sends one delivery, claimed by compare-and-set so that it is sent at most once;
   the Celery task retries it with backoff, each target on its own.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import current_app as current_celery_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from registry import notify
from registry.alert_text import Item, compose
from registry.models import (
    Alert,
    AlertDelivery,
    AlertEndpointState,
    AlertPending,
    AlertTarget,
    Endpoint,
    Event,
)
from registry.services.common import RegistryError

logger = logging.getLogger(__name__)

ALERT_PROCESS_TASK = "registry.tasks.process_alerts"
ALERT_SEND_TASK = "registry.tasks.send_alert"
_LOCK_ID = 0x41_4C_45_52  # "ALER": one processing run at a time on PostgreSQL (SQLite serialises writers)


class DeliveryFailed(Exception):
    """A target did not take an alert; the task retries it."""


@dataclass(frozen=True)
class Target:
    ref: str
    label: str
    kind: str
    url: str
    secret: str = ""


# --- targets ---------------------------------------------------------------------------


def _setting_ref(url: str) -> str:
    return "setting:" + hashlib.sha256(url.encode()).hexdigest()[:16]


def setting_targets() -> list[Target]:
    """The targets named in settings: ALERT_URLS (Apprise) and ALERT_WEBHOOK_URL."""
    found = [Target(_setting_ref(u), notify.mask_url(u), AlertTarget.Kind.APPRISE, u) for u in settings.ALERT_URLS]
    if settings.ALERT_WEBHOOK_URL:
        url = settings.ALERT_WEBHOOK_URL
        found.append(Target(_setting_ref(url), notify.mask_url(url), AlertTarget.Kind.WEBHOOK, url,
                            settings.ALERT_WEBHOOK_SECRET))  # fmt: skip
    return found


def _row_target(row: AlertTarget) -> Target:
    return Target(f"target:{row.id}", row.label, row.kind, row.url, row.secret)


def enabled_targets() -> list[Target]:
    return setting_targets() + [_row_target(t) for t in AlertTarget.objects.filter(enabled=True)]


def find_target(ref: str) -> Target | None:
    """The target a delivery names, as configured now (None when it was removed)."""
    if ref.startswith("target:"):
        row = AlertTarget.objects.filter(id=int(ref.removeprefix("target:"))).first()
        return _row_target(row) if row else None
    return next((t for t in setting_targets() if t.ref == ref), None)


def alerts_configured() -> bool:
    return bool(settings.ALERT_URLS or settings.ALERT_WEBHOOK_URL) or AlertTarget.objects.filter(enabled=True).exists()


def check_alert_target(kind: str, url: str, secret: str) -> None:
    """Refuse a target that could never be sent to (RegistryError naming the problem)."""
    url = url.strip()
    if kind == AlertTarget.Kind.WEBHOOK:
        if not url.lower().startswith(("http://", "https://")):
            raise RegistryError("invalid_url", "A webhook URL starts with http:// or https://.")
        if not secret:
            raise RegistryError("missing_secret", "A webhook needs a secret: receivers check the signature with it.")
        return
    import apprise

    if not apprise.Apprise().add(url):
        raise RegistryError(
            "invalid_url",
            "Apprise does not understand this URL (see its list of services), or the service needs a "
            "Python package the hub does not install.",
        )


def save_alert_target(target: AlertTarget) -> AlertTarget:
    check_alert_target(target.kind, target.url, target.secret)
    target.url = target.url.strip()
    target.save()
    return target


def delete_alert_targets(ids: Iterable[int]) -> int:
    return AlertTarget.objects.filter(id__in=list(ids)).delete()[0]


# --- noting events ---------------------------------------------------------------------


def is_alert_worthy(event: Event) -> bool:
    """Turned unhealthy (always after the failure threshold), or healthy again after that."""
    if event.kind != Event.Kind.STATUS:
        return False
    before, after = event.detail.get("from"), event.detail.get("to")
    return after == Endpoint.Status.UNHEALTHY or (
        after == Endpoint.Status.HEALTHY and before == Endpoint.Status.UNHEALTHY
    )


def note_alert_events(events: Iterable[Event]) -> int:
    """Keep the alert-worthy events for processing (same transaction); queue it on commit."""
    worthy = [e for e in events if e.id is not None and is_alert_worthy(e)]
    if not worthy or not alerts_configured():
        return 0
    AlertPending.objects.bulk_create([AlertPending(event_id=e.id) for e in worthy], ignore_conflicts=True)
    transaction.on_commit(lambda: queue_alert_processing(settings.ALERT_GROUP_SECONDS))
    return len(worthy)


def queue_alert_processing(countdown: float) -> None:
    """Ask a worker to process pending alert events after `countdown` seconds (by task name)."""
    try:
        # retry=False: with the broker away, fail at once rather than hold up the probe run
        # that recorded the events.
        current_celery_app.send_task(ALERT_PROCESS_TASK, countdown=max(0.0, countdown), retry=False)
    except Exception:  # the broker is away: the periodic alert sweep picks the events up
        logger.warning("could not queue alert processing", exc_info=True)


def _queue_delivery(delivery_id: int) -> None:
    try:
        current_celery_app.send_task(ALERT_SEND_TASK, args=[delivery_id], retry=False)
    except Exception:  # the alert sweep queues it again
        logger.warning("could not queue alert delivery %s", delivery_id, exc_info=True)


# --- processing ------------------------------------------------------------------------


def process_alerts(*, now: datetime | None = None, older_than_seconds: float = 0.0) -> list[int]:
    """Turn pending events into alerts with one delivery per target; return the new alert ids.

    `older_than_seconds` leaves younger events to the task their own commit queued (the
    periodic sweep passes the grouping window, so it never cuts a group short).
    """
    now = now or timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
        pending = Event.objects.filter(id__in=AlertPending.objects.values("event_id")).order_by("at", "id")
        if older_than_seconds:
            pending = pending.filter(at__lte=now - timedelta(seconds=older_than_seconds))
        pending = list(pending)
        states = {s.endpoint_id: s for s in AlertEndpointState.objects.all()}
        groups = _flapping(pending, states, now)
        groups += _stable_again(states, now)
        alerts = _create_alerts(groups, now)
        AlertPending.objects.filter(event_id__in=[e.id for e in pending]).delete()
        deliveries = _create_deliveries(alerts) if alerts else []
        transaction.on_commit(lambda: [_queue_delivery(d) for d in deliveries])
    return [a.id for a in alerts]


def _flapping(pending: list[Event], states: dict[int, AlertEndpointState], now: datetime) -> list[tuple]:
    """Split pending transitions into flapping reports and plain ones; return (kind, items) groups."""
    window = timedelta(seconds=settings.ALERT_FLAP_WINDOW_SECONDS)
    by_endpoint: dict[int | None, list[Event]] = defaultdict(list)
    for event in pending:
        by_endpoint[event.endpoint_id].append(event)
    recent = _transition_counts([i for i in by_endpoint if i is not None], now - window)
    groups: list[tuple] = []
    for endpoint_id, events in by_endpoint.items():
        last = events[-1]
        state = states.get(endpoint_id)
        if state is not None:  # flapping already reported: stay quiet, remember the flip
            state.last_flip_at = max(state.last_flip_at or last.at, last.at)
            state.save(update_fields=["last_flip_at"])
            continue
        count = recent.get(endpoint_id, 0)
        if endpoint_id is not None and count >= settings.ALERT_FLAP_TRANSITIONS:
            state, _ = AlertEndpointState.objects.update_or_create(
                endpoint_id=endpoint_id, defaults={"flapping_since": now, "last_flip_at": last.at}
            )
            states[endpoint_id] = state
            item = Item(endpoint_id, _label(last), last.host, status=last.detail.get("to", ""), transitions=count)
            item.event_ids = [e.id for e in events]
            groups.append(("flapping", last.host, [item]))
            continue
        for event in events:
            groups.append(_transition(event))
    return groups


def _transition_counts(endpoint_ids: list[int], since: datetime) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    rows = Event.objects.filter(kind=Event.Kind.STATUS, endpoint_id__in=endpoint_ids, at__gte=since)
    for endpoint_id in rows.values_list("endpoint_id", flat=True):
        counts[endpoint_id] += 1
    return counts


def _label(event: Event) -> str:
    return event.endpoint_label or f"endpoint {event.endpoint_id}"


def _transition(event: Event) -> tuple:
    to = event.detail.get("to", "")
    item = Item(event.endpoint_id, _label(event), event.host, status=to, event_ids=[event.id])
    if to == Endpoint.Status.UNHEALTHY:
        item.reason = event.detail.get("reason", "")
        return ("down", event.host, [item])
    went_down = (
        Event.objects.filter(kind=Event.Kind.STATUS, endpoint_id=event.endpoint_id, at__lte=event.at, id__lt=event.id)
        .filter(detail__to=Endpoint.Status.UNHEALTHY)
        .order_by("-at", "-id")
        .values_list("at", flat=True)
        .first()
    )
    if went_down is not None:
        item.down_seconds = (event.at - went_down).total_seconds()
    return ("up", event.host, [item])


def _stable_again(states: dict[int, AlertEndpointState], now: datetime) -> list[tuple]:
    """Flapping endpoints without a change for the flap window: one "stable again" each."""
    quiet_since = now - timedelta(seconds=settings.ALERT_FLAP_WINDOW_SECONDS)
    groups = []
    for endpoint_id, state in list(states.items()):
        if state.last_flip_at and state.last_flip_at > quiet_since:
            continue
        last = Event.objects.filter(kind=Event.Kind.STATUS, endpoint_id=endpoint_id).order_by("-at", "-id").first()
        status = Endpoint.objects.filter(id=endpoint_id).values_list("status", flat=True).first() or "removed"
        label, host = (_label(last), last.host) if last else (f"endpoint {endpoint_id}", "")
        groups.append(("stable", host, [Item(endpoint_id, label, host, status=status)]))
        state.delete()  # only flapping endpoints keep a row
        del states[endpoint_id]
    return groups


def _create_alerts(groups: list[tuple], now: datetime) -> list[Alert]:
    """Merge groups of one kind on one host into one alert each."""
    merged: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for kind, host, items in groups:
        merged[(kind, host)].extend(items)
    alerts = []
    for (kind, host), items in merged.items():
        whole_host = kind in ("down", "up") and len(items) > 1 and _whole_host(host, items, kind)
        title, text = compose(kind, host, items, whole_host=whole_host, flap_window=settings.ALERT_FLAP_WINDOW_SECONDS)
        ids = sorted(i for item in items for i in item.event_ids)
        key = f"{kind}:{host}:" + (",".join(map(str, ids)) if ids else f"{items[0].endpoint_id}@{now.isoformat()}")
        key = key if len(key) <= 200 else key[:150] + hashlib.sha256(key.encode()).hexdigest()[:40]
        alert, created = Alert.objects.get_or_create(
            key=key,
            defaults={"kind": kind, "host": host, "title": title[:200], "text": text, "at": now,
                      "endpoints": [i.as_json() for i in items]},
        )  # fmt: skip
        if created:
            alerts.append(alert)
    return alerts


def _whole_host(host: str, items: list[Item], kind: str) -> bool:
    """Every endpoint of the host is in this group (all down together, or all back)."""
    ids = set(Endpoint.objects.filter(host__name=host).values_list("id", flat=True))
    return bool(ids) and ids <= {i.endpoint_id for i in items}


def _create_deliveries(alerts: list[Alert], targets: list[Target] | None = None) -> list[int]:
    targets = enabled_targets() if targets is None else targets
    rows = [AlertDelivery(alert=a, target_ref=t.ref, target_label=t.label[:100]) for a in alerts for t in targets]
    AlertDelivery.objects.bulk_create(rows, ignore_conflicts=True)
    return list(
        AlertDelivery.objects.filter(alert__in=alerts, status=AlertDelivery.Status.PENDING).values_list("id", flat=True)
    )


def requeue_stalled_deliveries(*, now: datetime | None = None, after_seconds: float = 60.0) -> int:
    """Queue again deliveries never tried for a minute (their task was lost); return how many."""
    cutoff = (now or timezone.now()) - timedelta(seconds=after_seconds)
    stalled = AlertDelivery.objects.filter(status=AlertDelivery.Status.PENDING, attempts=0, alert__at__lt=cutoff)
    ids = list(stalled.values_list("id", flat=True)[:1000])
    for delivery_id in ids:  # a copy that was only slow is harmless: deliver() claims before sending
        _queue_delivery(delivery_id)
    return len(ids)


def prune_alerts(*, now: datetime | None = None) -> int:
    """Delete alerts (and their deliveries) older than ALERT_RETENTION_DAYS; return how many."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.ALERT_RETENTION_DAYS)
    return Alert.objects.filter(at__lt=cutoff).delete()[1].get("registry.Alert", 0)


def send_test_alert(target_ids: Iterable[int]) -> int:
    """Queue a test message to these targets (enabled or not); return how many were queued."""
    targets = [_row_target(t) for t in AlertTarget.objects.filter(id__in=list(target_ids))]
    if not targets:
        return 0
    with transaction.atomic():
        alert = Alert.objects.create(
            key=f"test:{uuid.uuid4().hex}", kind=Alert.Kind.TEST, title="Test notification from the LLM registry",
            text="This is a test: alerts from the LLM registry reach this target.",
        )  # fmt: skip
        deliveries = _create_deliveries([alert], targets)
        transaction.on_commit(lambda: [_queue_delivery(d) for d in deliveries])
    return len(deliveries)


# --- delivering ------------------------------------------------------------------------


def alert_payload(alert: Alert) -> dict:
    """The webhook's JSON body."""
    return {
        "event": alert.kind,
        "alert_id": alert.id,
        "title": alert.title,
        "text": alert.text,
        "host": alert.host,
        "endpoints": alert.endpoints,
        "at": alert.at.isoformat(),
    }


def deliver(delivery_id: int, *, final: bool = False, now: datetime | None = None) -> str:
    """Send one delivery unless it was sent or is being sent; return its status.

    Raises DeliveryFailed when the target refused it (the delivery stays pending for a retry,
    or is marked failed when `final`).
    """
    now = now or timezone.now()
    lease = now + timedelta(seconds=settings.ALERT_TIMEOUT_SECONDS * 2 + 10)
    claimable = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    open_statuses = [AlertDelivery.Status.PENDING, AlertDelivery.Status.SENDING]
    claimed = (
        AlertDelivery.objects.filter(id=delivery_id, status__in=open_statuses)
        .filter(claimable)
        .update(status=AlertDelivery.Status.SENDING, claimed_until=lease, attempts=F("attempts") + 1)
    )
    if not claimed:
        return "skipped"
    delivery = AlertDelivery.objects.select_related("alert").get(id=delivery_id)
    rows = AlertDelivery.objects.filter(id=delivery_id)
    target = find_target(delivery.target_ref)
    if target is None:
        rows.update(status=AlertDelivery.Status.FAILED, last_error="target removed", claimed_until=None)
        return AlertDelivery.Status.FAILED
    try:
        _send(target, delivery.alert)
    except notify.SendError as exc:
        status = AlertDelivery.Status.FAILED if final else AlertDelivery.Status.PENDING
        rows.update(status=status, last_error=str(exc)[:300], claimed_until=None)
        logger.warning(
            "alert %s to %s failed (attempt %d): %s", delivery.alert_id, target.label, delivery.attempts, exc
        )
        raise DeliveryFailed(str(exc)) from None
    rows.update(status=AlertDelivery.Status.SENT, sent_at=timezone.now(), last_error="", claimed_until=None)
    return AlertDelivery.Status.SENT


def _send(target: Target, alert: Alert) -> None:
    timeout = settings.ALERT_TIMEOUT_SECONDS
    if target.kind == AlertTarget.Kind.WEBHOOK:
        notify.send_webhook(target.url, target.secret, alert_payload(alert), timeout=timeout)
    else:
        notify.send_apprise(target.url, alert.title, alert.text, timeout=timeout)
