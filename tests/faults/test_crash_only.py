"""kill -9 of daphne or of the Celery worker under `make run`: the launcher restarts it and the hub answers again.

Real processes: the launcher in a subprocess (its own run folder, SQLite database, port and
namespace) on the test run's Redis. Restart times are printed (`-s`) for the README.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from tests.faults.hub import LaunchedHub, seconds_until
from tests.live import LiveStack, wait_until

pytestmark = pytest.mark.live


@pytest.fixture
def hub(tmp_path):
    launched = LaunchedHub(tmp_path).start()
    try:
        launched.wait_ready()
        yield launched
    finally:
        launched.stop()


def kill_and_wait_for_restart(hub: LaunchedHub, name: str) -> float:
    """kill -9 the child `name`; return the seconds until the launcher has started a new one."""
    pid = hub.pid_of(name)
    os.kill(pid, signal.SIGKILL)
    took = seconds_until(lambda: hub.pid_of(name) != pid, timeout=40)
    assert took is not None, hub.log()
    assert f"{name} (pid {pid}) died (killed by signal 9); restarting it in" in hub.log()
    return took


def test_a_killed_daphne_or_worker_is_restarted_and_the_hub_answers_again(hub, fake_fleet):
    token = hub.admin_token()

    restart = kill_and_wait_for_restart(hub, "daphne")
    answers = seconds_until(lambda: hub.request("GET", "/healthz")[0] == 200, timeout=30)
    assert answers is not None, hub.log()
    print(
        f"\ndaphne killed: restarted after {restart:.2f} s, /healthz answered {restart + answers:.2f} s after the kill"
    )
    # The new daphne takes registrations; the worker probes them.
    first = hub.register(token, fake_fleet.add(models=["llama3"])[1])
    assert wait_until(lambda: hub.status_of(token, first) == "healthy", timeout=30), hub.log()

    killed = time.monotonic()
    restart = kill_and_wait_for_restart(hub, "worker")
    # The new worker takes the next registration's probe (queued at once, taken once it is up).
    second = hub.register(token, fake_fleet.add(models=["llama3"])[1])
    assert wait_until(lambda: hub.status_of(token, second) == "healthy", timeout=30), hub.log()
    probed = time.monotonic() - killed
    print(f"worker killed: restarted after {restart:.2f} s, a new endpoint probed {probed:.2f} s after the kill")

    # A second crash soon after the first waits twice as long (crash loops back off).
    kill_and_wait_for_restart(hub, "worker")
    assert "worker (pid" in hub.log() and "restarting it in 1 s" in hub.log()


def readyz(url: str) -> tuple[int, dict]:
    try:
        reply = httpx.get(f"{url}/readyz", timeout=5)
    except httpx.HTTPError:
        return 0, {}
    return reply.status_code, reply.json()


@pytest.mark.django_db(transaction=True)
def test_readyz_names_the_worker_while_no_worker_is_alive(tmp_path):
    # No supervisor here: the worker stays dead, as when a service manager has not restarted it yet.
    stack = LiveStack(tmp_path, probe_interval=60.0).start()
    try:
        assert wait_until(lambda: readyz(stack.url)[0] == 200, timeout=30), readyz(stack.url)
        os.kill(stack.procs["worker"].pid, signal.SIGKILL)
        assert wait_until(lambda: readyz(stack.url)[0] == 503, timeout=30), readyz(stack.url)
        body = readyz(stack.url)[1]
        assert body["worker"].startswith("down") and body["database"] == "ok" and body["redis"] == "ok"
    finally:
        stack.stop()
