"""What the REST API and the dashboard socket really send matches registry.wire, and OpenAPI says so."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.db import OperationalError
from django.test import Client
from django.utils import timezone
from pydantic import TypeAdapter

from registry import services, wire
from registry.models import Endpoint, Host
from registry.schemas import SidecarReport
from tests.dashboard.test_consumer import connect, receive

GIB = 1024**3
REPORT = "/api/v1/sidecar/report"


def report_body(host: str, *, gpus: int) -> dict:
    cards = [
        {"index": i, "name": "NVIDIA A100", "memory_used_bytes": GIB, "memory_total_bytes": 40 * GIB}
        | ({"utilization_percent": 37.5} if i == 0 else {})
        for i in range(gpus)
    ]
    vram = (sum(c["memory_used_bytes"] for c in cards), sum(c["memory_total_bytes"] for c in cards)) if gpus else None
    return {
        "host": host,
        "hostname": f"{host}.lan",
        "cpu_percent": 12.5,
        "ram_used_bytes": 8 * GIB,
        "ram_total_bytes": 64 * GIB,
        "vram_used_bytes": vram and vram[0],
        "vram_total_bytes": vram and vram[1],
        "gpus": cards,
    }


def post_report(token: str, host: str, *, gpus: int) -> None:
    response = Client().post(
        REPORT, json.dumps(report_body(host, gpus=gpus)), "application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )
    assert response.status_code == 200, response.content


def make_fleet(fake_fleet, token: str) -> Endpoint:
    """A probed endpoint holding a loaded and an idle model; hosts with two GPUs, none, and a silent one."""
    address, port = fake_fleet.add(models=["llama3:8b", "mistral:7b"], loaded=["llama3:8b"])
    endpoint, _ = services.register_endpoint(address, port, "rack 3")
    services.probe([endpoint.id])
    post_report(token, endpoint.host.name, gpus=2)
    post_report(token, "cpu-only", gpus=0)
    silent = SidecarReport.model_validate(report_body("silent", gpus=1))
    services.record_report(silent, now=timezone.now() - timedelta(days=1))
    return endpoint


def assert_rich(snapshot: wire.Snapshot) -> None:
    """The rows checked carry every optional part, so the contract is checked on real values."""
    (row,) = snapshot.endpoints
    assert row.status == "healthy" and {m.loaded for m in row.models} == {True, False}
    assert any(m.size_vram and m.expires_at for m in row.models)
    res = snapshot.resources
    assert len(res[row.host].gpus) == 2 and res["cpu-only"].vram_total_bytes is None and res["silent"].stale


def test_rest_replies_validate_against_the_wire_models(api, admin_token, fake_fleet):
    created = api.post("/api/v1/endpoints", {"host": "gpu-new", "port": 11500}, admin_token)
    assert created.status_code == 201
    wire.EndpointRow.model_validate(created.json())
    Endpoint.objects.all().delete()

    endpoint = make_fleet(fake_fleet, admin_token)
    assert_rich(wire.Snapshot.model_validate(api.get("/api/v1/snapshot", admin_token).json()))
    rows = TypeAdapter(list[wire.EndpointRow]).validate_python(api.get("/api/v1/endpoints", admin_token).json())
    assert [r.id for r in rows] == [endpoint.id]
    one = wire.EndpointRow.model_validate(api.get(f"/api/v1/endpoints/{endpoint.id}", admin_token).json())
    assert one == rows[0]


def busy(monkeypatch, service: str):
    """Make a service fail as a locked or unreachable database does."""

    def fail(*args, **kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(services, service, fail)


E = "/api/v1/endpoints"
ONE = "/api/v1/endpoints/{endpoint_id}"
SNAP = "/api/v1/snapshot"
WRONG = "agc_adm_not-a-real-token"

# Every error a route can answer, provoked for real: (method, path as OpenAPI names it, status, call).
ERROR_CASES = [
    ("get", E, 401, lambda api, t, mp: api.get(E)),
    ("get", E, 403, lambda api, t, mp: api.get(E, t["sidecar"])),
    ("get", E, 400, lambda api, t, mp: api.get(f"{E}?status=sleepy", t["admin"])),
    ("get", E, 503, lambda api, t, mp: busy(mp, "find_endpoints") or api.get(E, t["admin"])),
    ("post", E, 400, lambda api, t, mp: api.post(E, {"host": "a b"}, t["admin"])),
    ("post", E, 401, lambda api, t, mp: api.post(E, {"host": "gpu-09"}, WRONG)),
    ("post", E, 403, lambda api, t, mp: api.post(E, {"host": "gpu-09"}, t["sidecar"])),
    ("post", E, 409, lambda api, t, mp: api.post(E, {"host": "gpu-01"}, t["admin"])),
    ("post", E, 413, lambda api, t, mp: api.post(E, {"host": "x", "name": "x" * 270_000}, t["admin"])),
    ("post", E, 503, lambda api, t, mp: busy(mp, "register_endpoint") or api.post(E, {"host": "x"}, t["admin"])),
    ("get", ONE, 400, lambda api, t, mp: api.get(f"{E}/abc", t["admin"])),
    ("get", ONE, 401, lambda api, t, mp: api.get(f"{E}/1")),
    ("get", ONE, 403, lambda api, t, mp: api.get(f"{E}/1", t["sidecar"])),
    ("get", ONE, 404, lambda api, t, mp: api.get(f"{E}/999", t["admin"])),
    ("get", ONE, 503, lambda api, t, mp: busy(mp, "get_endpoint") or api.get(f"{E}/1", t["admin"])),
    ("delete", ONE, 400, lambda api, t, mp: api.delete(f"{E}/x", t["admin"])),
    ("delete", ONE, 401, lambda api, t, mp: api.delete(f"{E}/1", WRONG)),
    ("delete", ONE, 403, lambda api, t, mp: api.delete(f"{E}/1", t["sidecar"])),
    ("delete", ONE, 404, lambda api, t, mp: api.delete(f"{E}/999", t["admin"])),
    ("delete", ONE, 503, lambda api, t, mp: busy(mp, "remove_endpoint") or api.delete(f"{E}/1", t["admin"])),
    ("get", SNAP, 400, lambda api, t, mp: api.get(f"{SNAP}?limit=0", t["admin"])),
    ("get", SNAP, 401, lambda api, t, mp: api.get(SNAP)),
    ("get", SNAP, 403, lambda api, t, mp: api.get(SNAP, t["sidecar"])),
    ("get", SNAP, 503, lambda api, t, mp: busy(mp, "build_snapshot") or api.get(SNAP, t["admin"])),
]


@pytest.fixture
def openapi(api) -> dict:
    return api.get("/api/v1/openapi.json").json()


def resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def reply_schema(spec: dict, method: str, path: str, status: int) -> dict:
    reply = spec["paths"][path][method]["responses"][str(status)]
    return resolve(spec, reply["content"]["application/json"]["schema"])


@pytest.mark.parametrize(("method", "path", "status", "call"), ERROR_CASES)
def test_each_error_a_route_answers_is_documented_with_the_error_body(
    api, openapi, admin_token, sidecar_token, monkeypatch, method, path, status, call
):
    Endpoint.objects.create(host=Host.objects.create(name="gpu-01"), address="gpu-01", port=11434)
    response = call(api, {"admin": admin_token, "sidecar": sidecar_token}, monkeypatch)
    assert response.status_code == status, response.content
    wire.ErrorBody.model_validate(response.json())
    assert set(reply_schema(openapi, method, path, status)["properties"]) == {"error", "detail"}


def test_openapi_documents_no_error_a_route_cannot_answer(openapi):
    provoked = {(method, path, status) for method, path, status, _ in ERROR_CASES}
    for method, path, _, _ in ERROR_CASES:
        documented = {int(s) for s in openapi["paths"][path][method]["responses"] if int(s) >= 400}
        assert {(method, path, s) for s in documented} <= provoked, (method, path)


def test_openapi_documents_the_snapshot_rows_models_and_gpus(openapi):
    snapshot = reply_schema(openapi, "get", "/api/v1/snapshot", 200)
    assert set(snapshot["properties"]) == set(wire.Snapshot.model_fields)
    row = resolve(openapi, snapshot["properties"]["endpoints"]["items"])
    assert set(row["properties"]) == set(wire.EndpointRow.model_fields)
    model = resolve(openapi, row["properties"]["models"]["items"])
    assert {"name", "loaded", "size_vram", "expires_at"} <= set(model["properties"])
    resources = resolve(openapi, snapshot["properties"]["resources"]["additionalProperties"])
    assert set(resources["properties"]) == set(wire.ResourcesRow.model_fields)
    gpu = resolve(openapi, resources["properties"]["gpus"]["items"])
    assert {"index", "memory_used_bytes", "memory_total_bytes", "utilization_percent"} <= set(gpu["properties"])
    assert resolve(openapi, reply_schema(openapi, "get", "/api/v1/endpoints", 200)["items"]) == row


def test_the_documented_status_and_source_words_are_the_models_own():
    fields = wire.EndpointRow.model_fields
    assert all(value in fields["status"].description for value in Endpoint.Status.values)
    assert all(value in fields["source"].description for value in Endpoint.Source.values)


# --- the dashboard socket ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_every_frame_the_socket_sends_validates_against_the_wire_models(
    operator, admin_token, fake_fleet, monkeypatch
):
    await sync_to_async(make_fleet)(fake_fleet, admin_token)
    socket = await connect(operator)
    seen: dict[str, list] = {}

    async def until(frame_type: str):
        while True:
            frame = await receive(socket)
            seen.setdefault(frame["type"], []).append(wire.SERVER_FRAMES[frame["type"]].model_validate(frame))
            if frame["type"] == frame_type:
                return seen[frame_type][-1]

    assert_rich(await until("snapshot"))
    await socket.send_json_to({"type": "register_llm_endpoint", "host": "gpu-02", "port": "11500", "name": "n"})
    registered = (await until("llm_endpoint_registered")).endpoint
    assert (registered.address, registered.port) == ("gpu-02", 11500)
    await sync_to_async(post_report)(admin_token, "gpu-02", gpus=1)
    while not (await until("llm_registry_update")).resources:
        pass
    await socket.send_json_to({"type": "remove_llm_endpoint", "id": str(registered.id)})
    assert (await until("llm_endpoint_removed")).id == registered.id
    while registered.id not in (await until("llm_registry_update")).removed:
        pass  # and nothing is left for the publisher to send after the test
    await socket.send_json_to({"type": "register_llm_endpoint", "host": "gpu-03", "port": "eleven"})
    assert (await until("llm_endpoint_error")).error == "port: port must be a number from 1 to 65535"
    await socket.send_json_to({"type": "remove_llm_endpoint", "id": "abc"})
    assert "whole number" in (await until("llm_endpoint_error")).error
    monkeypatch.setattr(wire, "MAX_FRAME_BYTES", 2000)  # the snapshot no longer fits one frame
    await socket.send_json_to({"type": "request_snapshot"})
    assert not (await until("snapshot")).complete
    while not (await until("snapshot_part")).complete:
        pass
    await sync_to_async(operator.user_permissions.clear)()
    permissions = await until("llm_permissions")
    assert (permissions.can_add, permissions.can_delete) == (False, False)
    await socket.disconnect()
    assert set(seen) == set(wire.SERVER_FRAMES)
