"""Registry signals -> the process's publisher, once the transaction has committed."""

from __future__ import annotations

from django.db import transaction
from django.dispatch import receiver

from dashboard.broadcast import publisher
from registry import signals


@receiver(signals.endpoints_changed)
def _on_endpoints_changed(sender, ids, **kwargs):
    ids = list(ids)
    transaction.on_commit(lambda: publisher.add(changed=ids))


@receiver(signals.endpoints_checked)
def _on_endpoints_checked(sender, ids, at, **kwargs):
    checked = dict.fromkeys(ids, at.isoformat())
    transaction.on_commit(lambda: publisher.add(checked=checked))


@receiver(signals.endpoints_removed)
def _on_endpoints_removed(sender, ids, **kwargs):
    ids = list(ids)
    transaction.on_commit(lambda: publisher.add(removed=ids))


@receiver(signals.resources_changed)
def _on_resources_changed(sender, hosts, **kwargs):
    hosts = list(hosts)
    transaction.on_commit(lambda: publisher.add(hosts=hosts))
