"""The sidecar report path under the ASGI app: well-formed reports are batched and answered after
commit; everything else gets exactly the REST route's answer; over capacity is a quick 503."""

from __future__ import annotations

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.db import connections

from registry import services
from registry.models import Endpoint, Host
from tests.registry.test_sidecar_report import URL, report

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def token(db):
    """A sidecar token bound to the host the report() bodies name."""
    return services.create_token("sidecar", "gpu-01", host="gpu-01.lan")[1]


@pytest.fixture
def admin(db):
    return services.create_token("admin", "ops")[1]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_a_report_is_stored_when_it_is_answered(hub, token):
    body = report(host="gpu-01.lan", ollama_url="http://127.0.0.9:11434", cpu_percent=12.5)
    response = await hub.post(URL, json=body, headers=bearer(token))
    assert response.status_code == 200, response.text
    endpoint = await sync_to_async(Endpoint.objects.get)()
    assert response.json() == {"host": "gpu-01.lan", "endpoint_id": endpoint.id}
    host = await sync_to_async(Host.objects.get)(name="gpu-01.lan")
    assert (host.cpu_percent, host.hostname, endpoint.source) == (12.5, "gpu-01.lan", "auto")


async def test_many_reports_at_once_are_all_stored(hub, admin):
    bodies = [report(host=f"gpu-{i:02d}", cpu_percent=i) for i in range(40)]
    replies = await asyncio.gather(*(hub.post(URL, json=b, headers=bearer(admin)) for b in bodies))
    assert {r.status_code for r in replies} == {200}
    stored = await sync_to_async(lambda: dict(Host.objects.values_list("name", "cpu_percent")))()
    assert stored == {f"gpu-{i:02d}": float(i) for i in range(40)}


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (report(), {}),
        (report(), {"Authorization": "Bearer nope"}),
        (report(), {"Authorization": "Token abc"}),
        (report(cpu_percent=101), None),
        (report(ollama_url="http://8.8.8.8:11434"), None),
        ("not json", None),
        (report(hostname="x" * 300), None),
        (report(host="gpu-02"), None),
        (report(ollama_url="http://10.1.2.3:11434"), None),
    ],
)
async def test_a_refused_report_gets_exactly_the_rest_routes_answer(hub, token, api, body, headers):
    headers = bearer(token) if headers is None else headers
    raw = body if isinstance(body, str) else None
    fast = await hub.post(URL, content=raw, json=None if raw else body, headers=headers)
    rest = await sync_to_async(api.client.post)(
        URL, raw or body, content_type="application/json", **{f"HTTP_{k.upper()}": v for k, v in headers.items()}
    )
    assert fast.status_code == rest.status_code and fast.status_code in (400, 401, 403)
    assert fast.json() == rest.json()
    assert not await sync_to_async(Host.objects.exists)()


async def test_over_capacity_a_report_is_refused_at_once_with_retry_after(hub, admin, settings):
    settings.REPORT_QUEUE_MAX = 1
    locked, release = threading.Event(), threading.Event()

    def hold_the_database():
        # Another writer holds the host table: the report writer waits behind it.
        with connections["default"].cursor() as cursor:
            if connections["default"].vendor == "sqlite":
                cursor.execute("BEGIN IMMEDIATE")
            else:
                cursor.execute("BEGIN")
                cursor.execute("LOCK TABLE registry_host IN EXCLUSIVE MODE")
            locked.set()
            release.wait(10)
            cursor.execute("COMMIT")
        connections["default"].close()

    holder = threading.Thread(target=hold_the_database)
    holder.start()
    await asyncio.to_thread(locked.wait, 5)
    first = asyncio.ensure_future(hub.post(URL, json=report(host="first"), headers=bearer(admin)))
    await asyncio.sleep(0.3)  # the writer has taken "first" and waits for the lock
    second = asyncio.ensure_future(hub.post(URL, json=report(host="second"), headers=bearer(admin)))
    await asyncio.sleep(0.3)  # "second" waits in the queue, which is now full
    third = await hub.post(URL, json=report(host="third"), headers=bearer(admin))
    assert third.status_code == 503
    assert third.json()["error"] == "overloaded" and third.headers["Retry-After"].isdigit()
    release.set()
    await asyncio.to_thread(holder.join)
    assert (await first).status_code == 200
    assert (await second).status_code in (200, 503)
    names = await sync_to_async(lambda: set(Host.objects.values_list("name", flat=True)))()
    assert "first" in names and "third" not in names
