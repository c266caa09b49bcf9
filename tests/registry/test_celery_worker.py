"""A real Celery worker and beat (real Redis) run the scheduled sweep; endpoints change status."""

from __future__ import annotations

import pytest

from registry import services
from registry.models import Endpoint
from tests.live import LiveStack, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]


@pytest.fixture(params=[("worker",), ("worker", "beat")], ids=["beat-inside-worker", "beat-on-its-own"])
def worker_and_beat(request, tmp_path):
    # Beat inside the worker (`make run`) or on its own (at scale). Chunks of one endpoint: the
    # sweep fans out into several tasks, as it would across workers.
    stack = LiveStack(
        tmp_path, probe_interval=1.0, probe_on_register=False, components=request.param, PROBE_CHUNK_SIZE="1"
    )
    stack.start()
    yield stack
    stack.stop()


def status_of(endpoint_id: int) -> str:
    return Endpoint.objects.get(id=endpoint_id).status


def test_beat_scheduled_sweep_marks_endpoints_healthy_and_unhealthy(fake_fleet, worker_and_beat):
    good_host, good_port = fake_fleet.add(models=["llama3:8b"], loaded=["llama3:8b"])
    bad_host, bad_port = fake_fleet.add(mode="http500")
    good, _ = services.register_endpoint(good_host, good_port)
    bad, _ = services.register_endpoint(bad_host, bad_port)

    assert wait_until(lambda: status_of(good.id) == "healthy", timeout=15), worker_and_beat.log("worker")
    assert [m.name for m in Endpoint.objects.get(id=good.id).models.all()] == ["llama3:8b"]
    # The sweep was split into one task per chunk (here one endpoint each).
    assert "probe_endpoints" in worker_and_beat.log("worker")
    assert wait_until(lambda: status_of(bad.id) == "unhealthy", timeout=15), worker_and_beat.log("worker")
    assert Endpoint.objects.get(id=bad.id).last_error == "HTTP 500"

    fake_fleet.set(good_host, good_port, mode="hang")
    assert wait_until(lambda: status_of(good.id) == "unhealthy", timeout=15), worker_and_beat.log("worker")
    assert "timed out" in Endpoint.objects.get(id=good.id).last_error


def test_a_newly_registered_endpoint_is_probed_at_once(fake_fleet, tmp_path, settings):
    # No beat at all here (embedded_beat=False): the only way a probe can happen is the task the
    # registration queued, so the wait below may be generous without weakening the test.
    stack = LiveStack(tmp_path, probe_interval=60.0, components=("worker",), embedded_beat=False).start()
    try:
        settings.PROBE_ON_REGISTER = True
        host, port = fake_fleet.add(models=["mistral:7b"])
        endpoint, _ = services.register_endpoint(host, port)
        assert wait_until(lambda: Endpoint.objects.get(id=endpoint.id).models.exists(), timeout=30), stack.log("worker")
        assert status_of(endpoint.id) == "healthy"
    finally:
        stack.stop()
