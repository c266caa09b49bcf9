"""GET /api/v1/hosts/{name}/history, /hosts/history and /endpoints/{id}/history: shape, filters, errors."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from registry import services, wire
from registry.models import Endpoint, Host, ResourceSnapshot
from registry.ollama import ProbeResult

GiB = 1024**3


@pytest.fixture
def history(db):
    """Two hosts with the last two hours reported once a minute (gpu-01 with two GPUs), and an
    endpoint probed once a minute for an hour, the newest probe 75 s ago: older than the roll-up's
    grace (10 s before the current minute) whatever the second the test runs at."""
    now = timezone.now()
    cards = [
        {"index": i, "name": "H100", "memory_used_bytes": (20 + 20 * i) * GiB, "memory_total_bytes": 80 * GiB}
        for i in range(2)
    ]
    gpu = Host.objects.create(name="gpu-01", gpus=cards)
    cpu = Host.objects.create(name="cpu-01")
    rows = []
    for minute in range(120):
        at = now - timedelta(minutes=minute, seconds=5)
        common = {
            "reported_at": at,
            "cpu_percent": minute % 10,
            "ram_used_bytes": 25 * GiB,
            "ram_total_bytes": 100 * GiB,
        }
        rows.append(
            ResourceSnapshot(host=gpu, vram_used_bytes=60 * GiB, vram_total_bytes=160 * GiB, gpus=cards, **common)
        )
        rows.append(ResourceSnapshot(host=cpu, **common))
    ResourceSnapshot.objects.bulk_create(rows)
    endpoint = Endpoint.objects.create(host=gpu, address="127.0.0.1", status=Endpoint.Status.HEALTHY)
    for minute in range(1, 61):
        at = now - timedelta(minutes=minute, seconds=15)
        services.record_probe_results([ProbeResult(endpoint.id, True, "", 20 + minute % 3, "", (), at)], now=at)
    services.roll_up(now=now)  # the beat's task: chunk samples become per-minute rows
    return endpoint


def test_a_hosts_history_comes_as_column_arrays_per_gpu(api, admin_token, history):
    reply = api.get("/api/v1/hosts/gpu-01/history?since=-1h&step=60", admin_token)
    assert reply.status_code == 200
    body = wire.HostHistory.model_validate(reply.json())
    assert body.host == "gpu-01" and body.step == 60
    assert 60 <= len(body.t) <= 61 and all(b - a == 60 for a, b in zip(body.t, body.t[1:], strict=False))
    assert len(body.cpu) == len(body.ram) == len(body.vram) == len(body.t)
    assert set(body.ram) == {25.0} and set(body.vram) == {37.5}
    assert [(g.index, g.name, set(g.used)) for g in body.gpus] == [(0, "H100", {25.0}), (1, "H100", {50.0})]


def test_a_coarser_step_gives_fewer_points_with_averages_and_peaks(api, admin_token, history):
    body = api.get("/api/v1/hosts/gpu-01/history?since=-2h&step=3600", admin_token).json()
    assert body["step"] == 3600 and 2 <= len(body["t"]) <= 3
    assert sum(body["samples"]) == 120
    assert max(body["cpu_max"]) == 9 and min(body["cpu_min"]) == 0


def test_the_default_window_is_a_day_and_the_step_the_finest_that_fits(api, admin_token, history):
    body = api.get("/api/v1/hosts/cpu-01/history", admin_token).json()
    assert body["step"] == 60
    assert body["vram"] == [None] * len(body["t"]) and body["gpus"] == []
    month = api.get("/api/v1/hosts/cpu-01/history?since=-30d", admin_token).json()
    assert month["step"] == 900  # 2,880 points


def test_several_hosts_in_one_request_leave_unknown_names_out(api, admin_token, history):
    reply = api.get("/api/v1/hosts/history?names=gpu-01,cpu-01,nobody&since=-1h&step=60", admin_token)
    assert reply.status_code == 200
    body = wire.HostsHistory.model_validate(reply.json())
    assert set(body.hosts) == {"gpu-01", "cpu-01"}
    assert 60 <= len(body.hosts["cpu-01"].t) <= 61
    # What a sparkline draws: CPU, and the fullest GPU (GPU 1 at 50 %, not the 37.5 % summed)
    assert set(body.hosts["gpu-01"].vram_top) == {50.0} and set(body.hosts["cpu-01"].vram_top) == {None}
    assert body.hosts["cpu-01"].cpu[-3:] == [2.0, 1.0, 0.0]


def test_an_endpoints_latency_over_time(api, admin_token, history):
    reply = api.get(f"/api/v1/endpoints/{history.id}/history?since=-2h&step=900", admin_token)
    assert reply.status_code == 200
    body = wire.EndpointHistory.model_validate(reply.json())
    assert sum(body.probes) == 60 and sum(body.failures) == 0
    assert min(body.latency_min) == 20 and max(body.latency_max) == 22


def test_a_logged_in_viewer_may_read_history(viewer, history):
    client = Client(enforce_csrf_checks=True)
    client.force_login(viewer)
    assert client.get("/api/v1/hosts/gpu-01/history?since=-1h").status_code == 200
    assert client.get(f"/api/v1/endpoints/{history.id}/history").status_code == 200


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("since=yesterday", "invalid_input"),
        ("since=2026-02-30T10:00:00Z", "invalid_since"),
        ("step=90", "invalid_input"),
        ("step=0", "invalid_input"),
        ("since=-30d&step=60", "too_many_points"),
    ],
)
def test_a_bad_window_is_a_json_400_naming_the_problem(api, admin_token, history, query, code):
    reply = api.get(f"/api/v1/hosts/gpu-01/history?{query}", admin_token)
    assert reply.status_code == 400
    assert reply.json()["error"] == code and reply.json()["detail"]


def test_unknown_hosts_and_endpoints_are_json_404s(api, admin_token, history):
    for url in ("/api/v1/hosts/nobody/history", "/api/v1/endpoints/999999/history"):
        reply = api.get(url, admin_token)
        assert reply.status_code == 404 and reply.json()["error"] == "not_found"


def test_history_needs_credentials_and_not_a_sidecar_token(api, sidecar_token, history):
    assert api.get("/api/v1/hosts/gpu-01/history").status_code == 401
    assert api.get("/api/v1/hosts/history?names=gpu-01").status_code == 401
    assert api.get("/api/v1/hosts/gpu-01/history", sidecar_token).status_code == 403
