"""The report socket: a sidecar keeps one WebSocket to the hub and sends a report per frame;
where the hub (or a proxy) takes no socket, it reports over REST instead."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from registry import services
from registry.models import Host
from tests.live import free_port
from tests.sidecar.test_live_hub import hub, resources_of, sidecar_process  # noqa: F401 (fixtures)

REPORT = {"hostname": "gpu-01", "cpu_percent": 12.5, "ram_used_bytes": 1, "ram_total_bytes": 2}


@pytest.fixture
def app():
    from agentcom_site.asgi import application

    return application


async def connect(app, token: str | None) -> WebsocketCommunicator:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    communicator = WebsocketCommunicator(app, "/ws/sidecar/", headers=headers)
    communicator.scope["client"] = ("127.0.0.1", 40000)
    return communicator


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_handshake_does_not_wait_behind_writes_in_the_shared_thread_pool(app):
    """First reports bind their tokens in the shared pool, where a write may wait for SQLite's
    writer lock; a new socket's token lookup must not queue behind them (1,000 sidecars
    reconnecting at once had handshakes dropped by daphne's timeout)."""
    import asyncio

    token = await database_sync_to_async(lambda: services.create_token("sidecar", "gpu-01", host="gpu-01")[1])()
    services.forget_cached_tokens()
    release = threading.Event()
    loop = asyncio.get_running_loop()
    busy = [loop.run_in_executor(None, release.wait, 10) for _ in range(64)]  # every shared thread taken
    try:
        ws = await connect(app, token)
        assert (await ws.connect(timeout=5))[0]
        await ws.disconnect()
    finally:
        release.set()
        await asyncio.gather(*busy)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_each_frame_is_answered_after_the_report_is_stored(app):
    token = await database_sync_to_async(lambda: services.create_token("sidecar", "gpu-01", host="gpu-01")[1])()
    ws = await connect(app, token)
    assert (await ws.connect())[0]
    await ws.send_json_to({"seq": 1, "report": REPORT})
    assert await ws.receive_json_from(timeout=5) == {"seq": 1, "status": 200, "host": "gpu-01", "endpoint_id": None}
    host = await database_sync_to_async(Host.objects.get)(name="gpu-01")
    assert host.cpu_percent == 12.5
    await ws.send_json_to({"seq": 2, "report": {**REPORT, "cpu_percent": 101}})
    refused = await ws.receive_json_from(timeout=5)
    assert (refused["seq"], refused["status"], refused["error"]) == (2, 400, "invalid_report")
    assert "cpu_percent" in refused["detail"]
    await ws.send_to(text_data="not json")
    assert (await ws.receive_json_from(timeout=5))["error"] == "invalid_json"
    await ws.send_json_to({"seq": 3, "report": {**REPORT, "hostname": "gpu-02"}})
    assert (await ws.receive_json_from(timeout=5))["status"] == 403  # bound to gpu-01
    await ws.send_json_to({"seq": 4, "report": {**REPORT, "cpu_percent": 50}})
    assert (await ws.receive_json_from(timeout=5))["status"] == 200  # the socket stayed up
    await ws.disconnect()
    names = await database_sync_to_async(lambda: list(Host.objects.values_list("name", "cpu_percent")))()
    assert names == [("gpu-01", 50.0)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("token", [None, "agc_sid_wrong"])
async def test_a_socket_without_a_valid_token_is_refused(app, token):
    ws = await connect(app, token)
    connected, code = await ws.connect()
    assert not connected and code == 4401


@pytest.mark.live
@pytest.mark.django_db(transaction=True)
def test_the_sidecar_reports_over_its_socket(hub, resources_of):  # noqa: F811
    token = services.create_token("sidecar", "gpu-sock")[1]
    dead = f"http://127.0.0.1:{free_port()}"
    proc = sidecar_process(
        hub.url, token, "--once", "--transport", "socket", "--host", "gpu-sock", "--ollama-url", dead
    )
    # --transport socket has no REST fallback: exit 0 means the report went over the socket.
    assert proc.wait(timeout=30) == 0, proc.stdout.read().decode()
    assert resources_of(hub, "gpu-sock") is not None


class RestOnlyHub(http.server.BaseHTTPRequestHandler):
    """A hub behind a proxy that passes no WebSocket: the handshake gets a 404, POSTs work."""

    received: list[dict] = []

    def do_GET(self):
        self.send_error(404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        RestOnlyHub.received.append(json.loads(body))
        reply = json.dumps({"host": "gpu-rest", "endpoint_id": None}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_without_a_socket_route_the_sidecar_reports_over_rest():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RestOnlyHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        dead = f"http://127.0.0.1:{free_port()}"
        proc = sidecar_process(url, "agc_sid_x", "--once", "--host", "gpu-rest", "--ollama-url", dead)
        assert proc.wait(timeout=30) == 0, proc.stdout.read().decode()
        assert [r["host"] for r in RestOnlyHub.received] == ["gpu-rest"]
    finally:
        server.shutdown()
