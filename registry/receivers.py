"""The registry's own receivers of its signals (the dashboard has its own in dashboard/receivers.py)."""

from __future__ import annotations

from django.dispatch import receiver

from registry import services, signals


@receiver(signals.events_recorded)
def _on_events_recorded(sender, events, **kwargs):
    # Inside the recording transaction: the pending rows commit (or roll back) with the events;
    # processing is queued on commit.
    services.note_alert_events(events)
