"""Domain events sent by registry.services after a state change (receivers live elsewhere).

Receivers must defer their work with `transaction.on_commit`: the change may still be
inside a transaction when the signal is sent.
"""

from __future__ import annotations

from django.dispatch import Signal

# ids: list[int] of endpoints whose row (status, models, name, ...) changed or appeared.
endpoints_changed = Signal()
# ids: list[int] of endpoints that were removed.
endpoints_removed = Signal()
# ids: list[int] probed at `at` (a datetime), changed or not: only "last checked" moved.
endpoints_checked = Signal()
# hosts: list[str] of host names whose latest resources changed.
resources_changed = Signal()
# events: list[registry.models.Event] just recorded (saved, with ids): the timeline, alerts.
events_recorded = Signal()
