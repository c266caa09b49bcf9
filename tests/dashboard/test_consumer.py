"""The dashboard WebSocket through the real ASGI application and a real Redis channel layer."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async as sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import Client

from agentcom_site.asgi import application
from dashboard.broadcast import EVENT_TYPE, GROUP
from registry import services, wire
from registry.models import Endpoint, Event
from registry.schemas import SidecarReport

pytestmark = [pytest.mark.django_db(transaction=True)]

ORIGIN = (b"origin", b"http://localhost")
HOST = (b"host", b"localhost")  # the origin check compares Origin with the Host the browser connected to


@sync_to_async
def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(user=None, origin=ORIGIN, host=HOST) -> WebsocketCommunicator:
    headers = [host, origin] if origin else [host]
    if user is not None:
        headers.append((b"cookie", await session_cookie(user)))
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    communicator.connected, communicator.close_code = connected, code
    return communicator


async def receive(communicator, timeout: float = 3) -> dict:
    return json.loads(await communicator.receive_from(timeout=timeout))


async def receive_until(communicator, frame_type: str, timeout: float = 3) -> dict:
    while True:
        frame = await receive(communicator, timeout)
        if frame["type"] == frame_type:
            return frame


@pytest.fixture
async def operator_ws(operator):
    communicator = await connect(operator)
    assert communicator.connected
    yield communicator
    await communicator.disconnect()


async def test_snapshot_is_sent_on_connect(operator):
    await sync_to_async(services.register_endpoint)("gpu-01", 11434, "first")
    communicator = await connect(operator)
    frame = await receive(communicator)
    assert frame["type"] == "snapshot"
    assert [e["host"] for e in frame["endpoints"]] == ["gpu-01"]
    assert {"resources", "fleet_models", "server_time", "stale_after_seconds"} <= set(frame)
    await communicator.disconnect()


async def test_a_change_made_elsewhere_arrives_as_a_delta(operator_ws):
    await receive_until(operator_ws, "snapshot")
    endpoint, _ = await sync_to_async(services.register_endpoint)("gpu-02")
    update = await receive_until(operator_ws, "llm_registry_update")
    assert [e["id"] for e in update["endpoints"]] == [endpoint.id]
    await sync_to_async(services.record_report)(
        SidecarReport(hostname="gpu-02", cpu_percent=12, ram_used_bytes=1, ram_total_bytes=2)
    )
    update = await receive_until(operator_ws, "llm_registry_update")
    assert update["resources"]["gpu-02"]["cpu_percent"] == 12
    await sync_to_async(services.remove_endpoint)(endpoint.id)
    update = await receive_until(operator_ws, "llm_registry_update")
    assert update["removed"] == [endpoint.id]


async def test_operator_adds_and_removes_an_endpoint_over_the_socket(operator_ws):
    await receive_until(operator_ws, "snapshot")
    await operator_ws.send_json_to({"type": "register_llm_endpoint", "host": "gpu-03", "port": 11434, "name": "x"})
    registered = await receive_until(operator_ws, "llm_endpoint_registered")
    endpoint_id = registered["endpoint"]["id"]
    assert await sync_to_async(Endpoint.objects.filter(id=endpoint_id).exists)()
    await operator_ws.send_json_to({"type": "remove_llm_endpoint", "id": endpoint_id})
    assert (await receive_until(operator_ws, "llm_endpoint_removed"))["id"] == endpoint_id
    assert not await sync_to_async(Endpoint.objects.exists)()
    # The timeline says who did it: the page's user.
    recorded = await sync_to_async(lambda: list(Event.objects.order_by("id").values_list("kind", "detail")))()
    assert recorded == [("registered", {"by": "user operator"}), ("removed", {"by": "user operator"})]


async def test_bad_registration_gets_an_error_frame_and_changes_nothing(operator_ws):
    await receive_until(operator_ws, "snapshot")
    await operator_ws.send_json_to({"type": "register_llm_endpoint", "host": "gpu 03", "port": 11434})
    error = await receive_until(operator_ws, "llm_endpoint_error")
    assert "spaces" in error["error"]
    await operator_ws.send_json_to({"type": "remove_llm_endpoint", "id": 424242})
    assert "does not exist" in (await receive_until(operator_ws, "llm_endpoint_error"))["error"]
    assert not await sync_to_async(Endpoint.objects.exists)()


async def test_viewer_may_watch_but_not_add_or_remove(viewer):
    endpoint, _ = await sync_to_async(services.register_endpoint)("gpu-04")
    communicator = await connect(viewer)
    assert communicator.connected
    await receive_until(communicator, "snapshot")
    await communicator.send_json_to({"type": "register_llm_endpoint", "host": "gpu-05", "port": 11434})
    assert "add_endpoint" in (await receive_until(communicator, "llm_endpoint_error"))["error"]
    await communicator.send_json_to({"type": "remove_llm_endpoint", "id": endpoint.id})
    assert "delete_endpoint" in (await receive_until(communicator, "llm_endpoint_error"))["error"]
    assert await sync_to_async(Endpoint.objects.count)() == 1
    await communicator.disconnect()


async def test_anonymous_socket_is_refused_and_sees_nothing(db):
    await sync_to_async(services.register_endpoint)("gpu-secret")
    communicator = await connect(None)
    assert not communicator.connected
    assert communicator.close_code == 4401  # refused by the consumer's login check
    assert await communicator.receive_nothing()  # no snapshot, no row


@pytest.mark.parametrize(
    "origin",
    [
        b"http://evil.example.com",
        b"http://localhost.evil.example.com",  # an allowed name as a prefix is not that name
        b"http://evil.example.com:8000",
        b"http://localhost:9999",  # another server on the hub's machine (the hub is localhost:80 here)
        b"https://localhost",  # another scheme
        b"null",  # a sandboxed frame or a file:// page
        None,  # no Origin header at all
    ],
)
async def test_a_logged_in_socket_from_a_foreign_origin_is_refused_before_the_login_check(operator, origin):
    await sync_to_async(services.register_endpoint)("gpu-secret")
    communicator = await connect(operator, origin=(b"origin", origin) if origin else None)
    assert not communicator.connected
    # Not the consumer's 4401: the origin check closed it before any login or snapshot happened.
    assert communicator.close_code != 4401
    assert await communicator.receive_nothing()


@pytest.mark.parametrize("origin", [b"http://localhost", b"http://127.0.0.1:8000", b"http://[::1]:8000"])
async def test_the_same_login_from_an_allowed_origin_gets_the_snapshot(operator, origin):
    await sync_to_async(services.register_endpoint)("gpu-secret")
    # The page and its socket share the origin: the browser sends that host and port as Host.
    communicator = await connect(operator, origin=(b"origin", origin), host=(b"host", origin.split(b"://")[1]))
    assert communicator.connected
    assert [e["host"] for e in (await receive_until(communicator, "snapshot"))["endpoints"]] == ["gpu-secret"]
    await communicator.disconnect()


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        json.dumps([1, 2, 3]),
        json.dumps({"no": "type"}),
        json.dumps({"type": 7}),
        json.dumps({"type": "launch_missiles"}),
        json.dumps({"type": "register_llm_endpoint", "host": {"a": 1}, "port": [1]}),
        json.dumps({"type": "remove_llm_endpoint", "id": "abc"}),
        "x" * 1_000_000,
    ],
)
async def test_malformed_frames_get_an_error_and_the_connection_stays_up(operator_ws, frame):
    await receive_until(operator_ws, "snapshot")
    await operator_ws.send_to(text_data=frame)
    assert (await receive_until(operator_ws, "llm_endpoint_error"))["error"]
    await operator_ws.send_json_to({"type": "request_snapshot"})
    assert (await receive_until(operator_ws, "snapshot"))["type"] == "snapshot"


async def test_a_burst_of_changes_is_coalesced_into_a_few_frames_with_the_final_state(operator_ws, settings):
    await receive_until(operator_ws, "snapshot")

    def burst():
        for i in range(40):
            services.register_endpoint(f"burst-{i:02d}")

    started = time.monotonic()
    await sync_to_async(burst)()
    seen: dict[int, dict] = {}
    frames = 0
    while len(seen) < 40:
        frame = await receive(operator_ws, timeout=5)
        if frame["type"] == "llm_registry_update":
            frames += 1
            seen.update({e["id"]: e for e in frame["endpoints"]})
    elapsed = time.monotonic() - started
    assert sorted(e["host"] for e in seen.values()) == [f"burst-{i:02d}" for i in range(40)]
    # One frame at once, then at most DASHBOARD_MAX_FRAMES_PER_SECOND (+1 for timer rounding),
    # however long the burst took on this machine (no fixed time limit).
    assert frames <= 2 + elapsed * settings.DASHBOARD_MAX_FRAMES_PER_SECOND


async def test_events_faster_than_the_frame_rate_reach_the_browser_merged(operator_ws, settings):
    # Straight onto the group, as several publishing processes together may send them.
    await receive_until(operator_ws, "snapshot")
    layer = get_channel_layer()
    started = time.monotonic()
    for i in range(40):
        row = {"id": 900_000 + i, "revision": 1, "host": f"fast-{i:02d}"}
        await layer.group_send(GROUP, {"type": EVENT_TYPE, "data": {"endpoints": [row]}})
    seen: dict[int, dict] = {}
    frames = 0
    while len(seen) < 40:
        frame = await receive_until(operator_ws, "llm_registry_update", timeout=5)
        frames += 1
        seen.update({e["id"]: e for e in frame["endpoints"]})
    elapsed = time.monotonic() - started
    assert sorted(seen) == [900_000 + i for i in range(40)]
    assert frames <= 2 + elapsed * settings.DASHBOARD_MAX_FRAMES_PER_SECOND


async def test_an_idle_socket_outlives_an_empty_blocking_read_and_answers(operator, monkeypatch):
    # The consumer waits for events in a blocking Redis read (BZPOPMIN, channels-redis's
    # brpop_timeout = 5 s) that comes back empty when nothing happens. A socket read timeout no
    # longer than that once killed every idle dashboard. Instead of sleeping "long enough", wait
    # for the event itself: one such read has come back, empty and without an error.
    layer = get_channel_layer()
    outcomes: list[str] = []
    came_back = asyncio.Event()
    blocking_read = layer._brpop_with_clean

    async def watched_read(index, channel, timeout):
        try:
            member = await blocking_read(index, channel, timeout)
        except Exception as exc:
            outcomes.append(repr(exc))
            came_back.set()
            raise
        if member is None:
            outcomes.append("empty")
            came_back.set()
        return member

    monkeypatch.setattr(layer, "_brpop_with_clean", watched_read)
    communicator = await connect(operator)  # its receive loop starts reading through the spy
    assert communicator.connected
    await receive_until(communicator, "snapshot")
    await asyncio.wait_for(came_back.wait(), timeout=layer.brpop_timeout * 3)
    assert outcomes[0] == "empty"
    await communicator.send_json_to({"type": "request_snapshot"})
    assert (await receive_until(communicator, "snapshot"))["type"] == "snapshot"
    await communicator.disconnect()


async def test_a_deeply_nested_frame_gets_an_error_and_the_connection_stays_up(operator_ws):
    await receive_until(operator_ws, "snapshot")
    await operator_ws.send_to(text_data="[" * 50_000)
    assert (await receive_until(operator_ws, "llm_endpoint_error"))["error"]
    await operator_ws.send_json_to({"type": "request_snapshot"})
    assert (await receive_until(operator_ws, "snapshot"))["type"] == "snapshot"


async def test_a_permission_revoked_while_connected_takes_effect_at_once(operator, operator_ws):
    await receive_until(operator_ws, "snapshot")
    await sync_to_async(operator.user_permissions.clear)()
    await operator_ws.send_json_to({"type": "register_llm_endpoint", "host": "gpu-09", "port": 11434})
    assert "add_endpoint" in (await receive_until(operator_ws, "llm_endpoint_error"))["error"]
    assert not await sync_to_async(Endpoint.objects.exists)()


async def test_an_unchanged_probe_still_moves_last_checked_on_open_dashboards(operator_ws):
    from django.utils import timezone

    from registry.ollama import ProbeResult

    await receive_until(operator_ws, "snapshot")
    endpoint, _ = await sync_to_async(services.register_endpoint)("gpu-07")
    await receive_until(operator_ws, "llm_registry_update")
    now = timezone.now()
    failed = ProbeResult(endpoint.id, False, "connection refused", 3, "", (), now)
    await sync_to_async(services.record_probe_results)([failed], now=now)  # failure 1: status unchanged
    update = await receive_until(operator_ws, "llm_registry_update")
    assert update["checked"] == {str(endpoint.id): now.isoformat()}


def test_a_late_older_row_or_a_row_for_a_removed_endpoint_is_not_shown():
    from dashboard.consumers import DashboardConsumer

    consumer = DashboardConsumer()
    consumer.pending, consumer.removed_ids = None, set()
    consumer.merge({"endpoints": [{"id": 1, "revision": 5, "status": "unhealthy"}]})
    consumer.merge({"endpoints": [{"id": 1, "revision": 4, "status": "healthy"}]})  # read earlier, arrived later
    assert consumer.pending["endpoints"][1]["status"] == "unhealthy"
    consumer.merge({"removed": [2]})
    consumer.merge({"endpoints": [{"id": 2, "revision": 9}]})
    assert 2 not in consumer.pending["endpoints"] and consumer.pending["removed"] == {2}


# --- the session ends or changes while the page is open ---------------------------------------


async def closed_with(communicator, timeout: float = 5) -> int | None:
    """The close code the server sent (frames before it are skipped)."""
    while True:
        output = await communicator.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            return output.get("code")


async def test_logging_out_in_another_tab_closes_the_socket_so_the_page_goes_to_login(operator):
    client = Client()
    await sync_to_async(client.force_login)(operator)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=[HOST, ORIGIN, (b"cookie", cookie)])
    assert (await communicator.connect(timeout=5))[0]
    await receive_until(communicator, "snapshot")
    response = await sync_to_async(client.post)("/accounts/logout/")
    assert response.status_code == 302
    assert await closed_with(communicator) == 4401
    await communicator.disconnect()


async def test_a_deactivated_account_is_disconnected_at_once(operator, operator_ws):
    await receive_until(operator_ws, "snapshot")
    operator.is_active = False
    await sync_to_async(operator.save)()
    assert await closed_with(operator_ws) == 4403


async def test_another_session_of_the_same_user_stays_open_when_one_logs_out(operator):
    first, second = await connect(operator), await connect(operator)
    await receive_until(first, "snapshot")
    await receive_until(second, "snapshot")
    other = Client()
    await sync_to_async(other.force_login)(operator)
    await sync_to_async(other.post)("/accounts/logout/")
    await second.send_json_to({"type": "request_snapshot"})
    assert (await receive_until(second, "snapshot"))["type"] == "snapshot"
    await first.disconnect()
    await second.disconnect()


# --- the channel layer's Redis is down ---------------------------------------------------------


async def test_a_connect_while_redis_is_down_is_refused_with_try_again_later(operator, monkeypatch):
    from dashboard.consumers import DashboardConsumer

    async def redis_down(self) -> None:
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(DashboardConsumer, "join_groups", redis_down)
    communicator = await connect(operator)
    assert communicator.connected  # accepted only to say why it closes: a refused handshake has no code
    assert await closed_with(communicator) == wire.CLOSE_TRY_AGAIN
    await communicator.disconnect()
