"""The counters behind /metrics move on the hub's fast paths too: the lean report route and the
report socket (registry/ingest.py), dashboard sockets and the event publisher."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from dashboard.broadcast import publisher
from registry import services
from tests.dashboard.test_consumer import connect as connect_dashboard
from tests.registry.test_metrics import counters, reason, scrape  # noqa: F401 (counters: autouse fixture)
from tests.registry.test_sidecar_report import URL, report

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@database_sync_to_async
def tokens() -> tuple[str, str]:
    """(an admin token, a sidecar token bound to gpu-01)."""
    return services.create_token("admin", "ops")[1], services.create_token("sidecar", "s", host="gpu-01")[1]


@database_sync_to_async
def scraped(token: str) -> dict:
    return scrape(token)


async def test_the_lean_report_route_counts_accepted_and_overloaded_reports(hub, settings):
    admin, sidecar = await tokens()
    bearer = {"Authorization": f"Bearer {sidecar}"}
    for _ in range(3):
        assert (await hub.post(URL, json=report(host="gpu-01"), headers=bearer)).status_code == 200
    settings.REPORT_QUEUE_MAX = 0  # the writer's queue counts as full: every report is refused
    assert (await hub.post(URL, json=report(host="gpu-01"), headers=bearer)).status_code == 503

    samples = await scraped(admin)

    assert samples[("agentcom_sidecar_reports_accepted_total", ())] == 3
    assert samples[("agentcom_sidecar_reports_refused_total", reason("overloaded"))] == 1


async def test_the_report_socket_counts_frames_and_refused_handshakes():
    from agentcom_site.asgi import application

    admin, sidecar = await tokens()
    ws = WebsocketCommunicator(application, "/ws/sidecar/", headers=[(b"authorization", f"Bearer {sidecar}".encode())])
    ws.scope["client"] = ("127.0.0.1", 40000)
    assert (await ws.connect())[0]
    frame = {"hostname": "gpu-01", "cpu_percent": 1.0, "ram_used_bytes": 1, "ram_total_bytes": 2}
    await ws.send_json_to({"seq": 1, "report": frame})
    assert (await ws.receive_json_from(timeout=5))["status"] == 200
    await ws.send_json_to({"seq": 2, "report": {**frame, "hostname": "gpu-02"}})
    assert (await ws.receive_json_from(timeout=5))["error"] == "wrong_host"
    await ws.send_to(text_data="not json")
    assert (await ws.receive_json_from(timeout=5))["error"] == "invalid_json"
    await ws.disconnect()
    nobody = WebsocketCommunicator(application, "/ws/sidecar/", headers=[(b"authorization", b"Bearer made-up")])
    assert (await nobody.connect()) == (False, 4401)

    samples = await scraped(admin)

    assert samples[("agentcom_sidecar_reports_accepted_total", ())] == 1
    assert samples[("agentcom_sidecar_reports_refused_total", reason("wrong_host"))] == 1
    assert samples[("agentcom_sidecar_reports_refused_total", reason("invalid_json"))] == 1
    assert samples[("agentcom_sidecar_reports_refused_total", reason("unauthorized"))] == 1


async def test_open_dashboard_sockets_are_counted_until_they_close(operator):
    admin, _ = await tokens()
    first = await connect_dashboard(operator)
    second = await connect_dashboard(operator)
    assert first.connected and second.connected
    assert (await scraped(admin))[("agentcom_dashboard_sockets_open", ())] == 2
    await first.disconnect()
    assert (await scraped(admin))[("agentcom_dashboard_sockets_open", ())] == 1
    await second.disconnect()
    assert (await scraped(admin))[("agentcom_dashboard_sockets_open", ())] == 0
    refused = await connect_dashboard(None)  # not logged in: closed, never counted
    assert not refused.connected
    assert (await scraped(admin))[("agentcom_dashboard_sockets_open", ())] == 0


async def test_each_published_event_is_counted(operator):
    admin, _ = await tokens()
    endpoint, _ = await database_sync_to_async(services.register_endpoint)("127.0.0.2")
    await database_sync_to_async(publisher.flush)()  # the registration's event
    before = (await scraped(admin))[("agentcom_publisher_events_total", ())]
    publisher.add(changed=[endpoint.id])
    await database_sync_to_async(publisher.flush)()
    assert (await scraped(admin))[("agentcom_publisher_events_total", ())] == before + 1
