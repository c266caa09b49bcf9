"""Two hubs (two run folders, two databases) on one Redis: neither sees the other's tasks or events."""

from __future__ import annotations

import asyncio

import pytest
from channels_redis.core import RedisChannelLayer
from django.conf import settings

from dashboard.broadcast import GROUP
from tests.faults.hub import LaunchedHub
from tests.live import wait_until

pytestmark = pytest.mark.live


@pytest.fixture
def two_hubs(tmp_path):
    # No sweeps during the test (an hour apart): a probe can only come from a registration's task.
    hubs = [LaunchedHub(tmp_path / name, PROBE_INTERVAL_SECONDS="3600") for name in ("a", "b")]
    try:
        for hub in hubs:
            hub.folder.mkdir()
            hub.start()
        for hub in hubs:
            hub.wait_ready()
        yield hubs
    finally:
        for hub in hubs:
            hub.stop()


def test_each_hub_probes_and_shows_only_its_own_registrations(two_hubs, fake_fleet):
    a, b = two_hubs
    assert a.namespace != b.namespace  # derived from each hub's own database
    assert f"Redis {settings.REDIS_URL}, namespace {a.namespace}" in a.log()
    token = a.admin_token()

    async def watch() -> tuple[list, list]:
        layers = {hub: RedisChannelLayer(hosts=[settings.REDIS_URL], prefix=hub.namespace) for hub in (a, b)}
        channels = {}
        for hub, layer in layers.items():
            channels[hub] = await layer.new_channel()
            await layer.group_add(GROUP, channels[hub])
        # Registrations on A: each queues its own probe task on A's queue.
        ids = [await asyncio.to_thread(a.register, token, fake_fleet.add(models=["llama3"])[1]) for _ in range(6)]
        seen_by_a = [await asyncio.wait_for(layers[a].receive(channels[a]), timeout=15)]
        # A's event has reached A's group: one meant for B's would have reached B's by now.
        seen_by_b = []
        try:
            seen_by_b.append(await asyncio.wait_for(layers[b].receive(channels[b]), timeout=1))
        except TimeoutError:
            pass
        for layer in layers.values():
            await layer.flush()
        return ids, seen_by_a, seen_by_b

    ids, seen_by_a, seen_by_b = asyncio.run(watch())
    assert seen_by_a and seen_by_b == []
    # Every probe task was taken by A's worker (a shared queue would hand about half to B's).
    assert wait_until(lambda: all(a.status_of(token, i) == "healthy" for i in ids), timeout=30), a.log()
    assert b.request("GET", "/api/v1/endpoints", token=token)[0] == 401  # A's token means nothing to B
