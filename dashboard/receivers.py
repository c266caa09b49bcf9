"""Registry signals -> broadcast after the transaction commits."""

from __future__ import annotations

from django.db import transaction
from django.dispatch import receiver

from dashboard import broadcast
from registry import signals


@receiver(signals.endpoints_changed)
def _on_endpoints_changed(sender, ids, **kwargs):
    transaction.on_commit(lambda: broadcast.endpoints_changed(list(ids)))


@receiver(signals.endpoints_removed)
def _on_endpoints_removed(sender, ids, **kwargs):
    transaction.on_commit(lambda: broadcast.endpoints_removed(list(ids)))


@receiver(signals.resources_changed)
def _on_resources_changed(sender, hosts, **kwargs):
    transaction.on_commit(lambda: broadcast.resources_changed(list(hosts)))
