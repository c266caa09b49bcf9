"""Shared steps of the alert tests: endpoints, status events as probing records them, a processing run."""

from __future__ import annotations

from datetime import datetime

from registry import services
from registry.models import AlertDelivery, Endpoint, Event
from registry.services.events import record_events

SECRET = "a-webhook-secret-for-tests"


def endpoint(address: str = "127.0.0.5", port: int = 11434, name: str = "") -> Endpoint:
    return services.register_endpoint(address, port, name)[0]


def label(e: Endpoint) -> str:
    return f'"{e.name}" ({e.address}:{e.port})' if e.name else f"{e.address}:{e.port}"


def flip(e: Endpoint, before: str, after: str, at: datetime | None = None, reason: str = "") -> Event:
    """Record a status change of `e` (what probing records once the failure threshold is passed)."""
    detail = {"from": before, "to": after, **({"reason": reason} if reason else {})}
    event = Event(kind=Event.Kind.STATUS, endpoint_id=e.id, endpoint_label=label(e), host=e.host.name, detail=detail)
    if at is not None:
        event.at = at
    return record_events([event])[0]


def process_and_send(now: datetime | None = None) -> list[int]:
    """One processing run, then every pending delivery sent in this thread; return the new alert ids."""
    ids = services.process_alerts(now=now)
    for delivery_id in AlertDelivery.objects.filter(status=AlertDelivery.Status.PENDING).values_list("id", flat=True):
        try:
            services.deliver(delivery_id)
        except services.DeliveryFailed:
            pass
    return ids
