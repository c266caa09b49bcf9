"""Turn committed registry changes into typed events on the channel layer group."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from registry import services

logger = logging.getLogger(__name__)

GROUP = "llm_registry"
EVENT_TYPE = "registry.changed"  # handled by DashboardConsumer.registry_changed


def _send(data: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(GROUP, {"type": EVENT_TYPE, "data": data})
    except Exception:  # a Redis outage must not fail the request or task that changed state
        logger.warning("could not publish a registry event", exc_info=True)


def endpoints_changed(ids: list[int]) -> None:
    """Publish the changed endpoints as full rows, plus the new fleet summary."""
    rows = services.endpoint_rows(ids)
    found = {row["id"] for row in rows}
    _send({"endpoints": rows, "removed": [i for i in ids if i not in found], "fleet_models": services.fleet_models()})


def endpoints_removed(ids: list[int]) -> None:
    _send({"endpoints": [], "removed": list(ids), "fleet_models": services.fleet_models()})


def resources_changed(hosts: list[str]) -> None:
    _send({"resources": services.host_resources(hosts)})
