"""Events: what happened in the fleet (status changes, models, registrations, silent sidecars).

Services record events in the same transaction as the change they describe, with
`record_events`; receivers of `signals.events_recorded` (alerts, the page) act on commit.
"""

from __future__ import annotations

from collections.abc import Iterable

from registry import signals
from registry.models import Event


def record_events(events: Iterable[Event]) -> list[Event]:
    """Save the given (unsaved) events in one INSERT and announce them; return them saved."""
    events = list(events)
    if not events:
        return []
    saved = Event.objects.bulk_create(events)  # ids set: SQLite 3.35+ and PostgreSQL return them
    signals.events_recorded.send(sender=Event, events=saved)
    return saved
