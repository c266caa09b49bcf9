"""The publisher: changes added from any thread go out as few, merged events on the real channel
layer; a removal wins over a change of the same endpoint; a forked child starts clean."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.layers import get_channel_layer

from dashboard import broadcast
from dashboard.broadcast import EVENT_TYPE, Publisher
from registry.models import Endpoint, Host

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
async def events(monkeypatch):
    """The events published to a group of this test's own, read from the real Redis layer."""
    # Anything the process-wide publisher still holds from an earlier test goes out first, to
    # the shared group, so that only this test's publishers reach the group below.
    await sync_to_async(broadcast.publisher.flush)()
    monkeypatch.setattr(broadcast, "GROUP", f"test-broadcast-{uuid.uuid4().hex[:8]}")
    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(broadcast.GROUP, channel)

    async def receive(timeout: float = 5) -> dict:
        message = await asyncio.wait_for(layer.receive(channel), timeout)
        assert message["type"] == EVENT_TYPE
        return message["data"]

    yield receive
    await layer.group_discard(broadcast.GROUP, channel)


def make_endpoints(*addresses: str) -> list[int]:
    """Rows written directly (no services, so no signal reaches the process-wide publisher)."""
    ids = []
    for address in addresses:
        host = Host.objects.create(name=address)
        ids.append(Endpoint.objects.create(host=host, address=address, port=11434).id)
    return ids


async def test_a_burst_of_adds_goes_out_as_one_event_with_everything_in_it(events):
    a, b, c = await sync_to_async(make_endpoints)("burst-a", "burst-b", "burst-c")
    publisher = Publisher()
    # While one flush is in flight, everything added from other threads waits for the next one.
    with publisher.sending:
        publisher.add(changed=[a])
        publisher.add(changed=[b, a])
        publisher.add(hosts=["burst-a"])
        publisher.add(checked={c: "2030-01-01T00:00:00+00:00"})
    event = await events()
    assert sorted(row["id"] for row in event["endpoints"]) == [a, b]
    assert event["removed"] == []
    assert set(event["resources"]) == {"burst-a"}
    assert event["checked"] == {str(c): "2030-01-01T00:00:00+00:00"}
    # The next event holds only what came after: nothing of the burst was sent twice.
    publisher.add(changed=[c])
    assert [row["id"] for row in (await events())["endpoints"]] == [c]


async def test_a_removal_beats_a_change_of_the_same_endpoint_in_either_order(events):
    a, b, c = await sync_to_async(make_endpoints)("gone-a", "kept-b", "gone-c")
    publisher = Publisher()
    with publisher.sending:
        publisher.add(changed=[a, b], checked={a: "2030-01-01T00:00:00+00:00"})
        publisher.add(removed=[a])
        publisher.add(removed=[c])
        publisher.add(changed=[c])  # a late change of an endpoint removed in the same batch
    event = await events()
    assert [row["id"] for row in event["endpoints"]] == [b]
    assert event["removed"] == [a, c]
    assert "checked" not in event


async def test_a_change_of_an_endpoint_already_deleted_is_published_as_its_removal(events):
    (a,) = await sync_to_async(make_endpoints)("deleted-a")
    await sync_to_async(Endpoint.objects.filter(id=a).delete)()
    Publisher().add(changed=[a])
    event = await events()
    assert event["endpoints"] == [] and event["removed"] == [a]


def test_a_forked_child_starts_with_a_clean_publisher(monkeypatch):
    """Celery's prefork children fork from a parent that may hold pending ids and a busy lock."""
    publisher = broadcast.publisher
    monkeypatch.setattr(broadcast, "GROUP", f"test-fork-{uuid.uuid4().hex[:8]}")  # the parent's batch goes nowhere
    read_end, write_end = os.pipe()
    with publisher.sending:  # a flush in flight in the parent at the moment of the fork
        publisher.add(changed=[424242], removed=[424243], hosts=["parent-host"])
        parent_thread = publisher.thread
        pid = os.fork()
        if pid == 0:  # the child: report what it inherited, then leave without running any cleanup
            try:
                state = {
                    "pending": [sorted(publisher.changed), sorted(publisher.removed), sorted(publisher.hosts)],
                    "same_thread": publisher.thread is parent_thread,
                    "thread": publisher.thread is not None,
                    "loop": publisher.loop is not None,
                    "may_send": publisher.sending.acquire(blocking=False),
                    "may_add": publisher.lock.acquire(blocking=False),
                }
                os.write(write_end, json.dumps(state).encode())
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            child = json.loads(pipe.read())
        os.waitpid(pid, 0)
    assert child == {
        "pending": [[], [], []],
        "same_thread": False,
        "thread": False,
        "loop": False,
        "may_send": True,
        "may_add": True,
    }
    # The parent kept its own batch; it goes out once the flush in flight is done.
    publisher.flush()
    assert not (publisher.changed or publisher.removed or publisher.hosts)


async def test_a_publish_that_fails_is_retried_with_everything_it_held(events, monkeypatch):
    a, b = await sync_to_async(make_endpoints)("retry-a", "retry-b")
    monkeypatch.setattr(broadcast, "RETRY_MIN_SECONDS", 0.05)
    publisher = Publisher()
    real_send, failures = publisher._send, []

    def send(data: dict) -> None:
        if len(failures) < 2:  # Redis down for two tries
            failures.append(data)
            if len(failures) == 1:
                publisher.add(changed=[b])  # a change that comes while publishing fails
            raise ConnectionError("Connection closed by server.")
        real_send(data)

    publisher._send = send
    publisher.add(changed=[a], checked={a: "2030-01-01T00:00:00+00:00"})
    event = await events()
    assert len(failures) == 2
    assert sorted(row["id"] for row in event["endpoints"]) == [a, b]
    assert event["checked"] == {str(a): "2030-01-01T00:00:00+00:00"}
