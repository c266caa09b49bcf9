"""Nothing acknowledged is lost: reports answered 200 by a real daphne are in the database, also
when daphne dies (kill -9, worse than the Ctrl-C of `make run`) in the middle of the load."""

from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import pytest
from django.db import connections

from registry import services
from registry.models import Host
from tests.live import LiveStack

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]
HOSTS = 20


def body(host: int, seq: int) -> dict:
    return {
        "host": f"gpu-{host:02d}",
        "hostname": f"gpu-{host:02d}",
        "cpu_percent": seq % 100 + host / 100,
        "ram_used_bytes": seq,
        "ram_total_bytes": 10**12,
    }


async def report_until_refused(url: str, tokens: list[str], stop_after: float, stack: LiveStack) -> dict[str, int]:
    """Send reports from HOSTS sidecars as fast as they are answered; stop daphne midway.

    Return, per host, the sequence number of its last report answered 200.
    """
    acked: dict[str, int] = {}

    async def sidecar(i: int, client: httpx.AsyncClient) -> None:
        seq = 0
        while True:
            seq += 1
            try:
                response = await client.post(url, json=body(i, seq), headers={"Authorization": f"Bearer {tokens[i]}"})
            except httpx.TransportError:
                return  # the hub is gone
            if response.status_code == 200:
                acked[f"gpu-{i:02d}"] = seq

    async def stop_daphne() -> None:
        await asyncio.sleep(stop_after)
        # Another writer holds the database for a moment: reports pile up unwritten in daphne,
        # and exactly then it dies. None of those may have been answered 200.
        locked, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=hold_the_database, args=(locked, release))
        holder.start()
        await asyncio.to_thread(locked.wait, 10)
        await asyncio.sleep(0.5)
        stack.procs["daphne"].send_signal(signal.SIGKILL)
        await asyncio.to_thread(stack.procs["daphne"].wait, 10)
        release.set()
        await asyncio.to_thread(holder.join)

    async with httpx.AsyncClient(timeout=10) as client:
        await asyncio.gather(stop_daphne(), *(sidecar(i, client) for i in range(HOSTS)))
    return acked


def hold_the_database(locked: threading.Event, release: threading.Event) -> None:
    """Be another writer holding the database (from a thread) until `release`."""
    connection = connections.create_connection("default")
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            else:
                cursor.execute("BEGIN")
                cursor.execute("LOCK TABLE registry_host IN EXCLUSIVE MODE")
            locked.set()
            release.wait(20)
            cursor.execute("ROLLBACK")
    finally:
        connection.close()


def test_every_acknowledged_report_is_stored_across_a_stop_in_the_middle_of_the_load(tmp_path):
    tokens = [services.create_token("sidecar", f"gpu-{i:02d}")[1] for i in range(HOSTS)]
    stack = LiveStack(tmp_path, probe_on_register=False, components=("daphne",)).start()
    try:
        started = time.monotonic()
        acked = asyncio.run(report_until_refused(f"{stack.url}/api/v1/sidecar/report", tokens, 1.5, stack))
    finally:
        stack.stop()
    assert time.monotonic() - started < 60
    assert len(acked) == HOSTS and sum(acked.values()) > HOSTS  # the load really ran
    stored = dict(Host.objects.values_list("name", "ram_used_bytes"))
    # The stored value is the last acknowledged one, or a later one whose answer was cut off.
    behind = {name: (seq, stored.get(name)) for name, seq in acked.items() if (stored.get(name) or 0) < seq}
    assert not behind, f"acknowledged but not stored: {behind}"
