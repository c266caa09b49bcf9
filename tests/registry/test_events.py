"""Events: each visible change is recorded once, with its detail; quiet probes record nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry import services, signals
from registry.models import Endpoint, Event, Host
from registry.ollama import ModelInfo, ProbeResult
from registry.schemas import SidecarReport

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def model(name: str, loaded: bool = False) -> ModelInfo:
    return ModelInfo(
        name=name,
        digest="sha256:" + name,
        size=1000,
        family="llama",
        parameter_size="8B",
        quantization="Q4_0",
        modified_at=None,
        loaded=loaded,
        size_vram=500 if loaded else None,
        expires_at=None,
    )


def ok(endpoint: Endpoint, *models: ModelInfo, latency: int = 10) -> ProbeResult:
    return ProbeResult(endpoint.id, True, "", latency, "0.5.1", tuple(models), NOW)


def failed(endpoint: Endpoint, error: str = "connection refused") -> ProbeResult:
    return ProbeResult(endpoint.id, False, error, 3, "", (), NOW)


def events(kind: str | None = None) -> list[Event]:
    qs = Event.objects.order_by("at", "id")
    return list(qs.filter(kind=kind) if kind else qs)


@pytest.fixture
def endpoint(db) -> Endpoint:
    endpoint, _ = services.register_endpoint("127.0.0.1", 11434, "rack 3", by="user alice")
    return endpoint


@pytest.fixture
def announced():
    seen: list[Event] = []

    def _record(sender, events, **kwargs):
        seen.extend(events)

    signals.events_recorded.connect(_record)
    yield seen
    signals.events_recorded.disconnect(_record)


def test_registration_is_recorded_with_who_registered(endpoint):
    (event,) = events()
    assert event.kind == "registered" and event.detail == {"by": "user alice"}
    assert event.endpoint_id == endpoint.id and event.endpoint_label == '"rack 3" (127.0.0.1:11434)'
    assert event.host == "127.0.0.1"


def test_first_success_records_unknown_to_healthy_and_the_models_found(endpoint, announced):
    services.record_probe_results([ok(endpoint, model("llama3"), model("qwen2", loaded=True))], now=NOW)
    (status,) = events("status")
    assert status.detail == {"from": "unknown", "to": "healthy", "reason": ""} and status.at == NOW
    assert sorted(e.detail["model"] for e in events("model_added")) == ["llama3", "qwen2"]
    assert [e.detail["model"] for e in events("model_loaded")] == ["qwen2"]
    assert {e.kind for e in announced} == {"status", "model_added", "model_loaded"}


def test_going_down_is_one_event_with_its_reason_not_one_per_probe(endpoint, settings):
    settings.UNHEALTHY_AFTER_FAILURES = 2
    services.record_probe_results([ok(endpoint, model("llama3"))], now=NOW)
    for _ in range(5):
        services.record_probe_results([failed(endpoint, "timed out after 5 s")], now=NOW)
    (down,) = events("status")[1:]
    assert down.detail == {"from": "healthy", "to": "unhealthy", "reason": "timed out after 5 s"}
    # The models stay as last known while it is down: no model_removed.
    assert not events("model_removed")
    services.record_probe_results([ok(endpoint, model("llama3"))], now=NOW)
    services.record_probe_results([ok(endpoint, model("llama3"))], now=NOW)
    recovery = events("status")[2:]
    assert [e.detail for e in recovery] == [{"from": "unhealthy", "to": "healthy", "reason": ""}]


def test_models_appearing_leaving_loading_and_unloading_are_recorded(endpoint):
    services.record_probe_results([ok(endpoint, model("llama3"), model("mistral", loaded=True))], now=NOW)
    Event.objects.all().delete()
    services.record_probe_results([ok(endpoint, model("llama3", loaded=True), model("qwen2"))], now=NOW)
    got = sorted((e.kind, e.detail["model"]) for e in events())
    assert got == [("model_added", "qwen2"), ("model_loaded", "llama3"), ("model_removed", "mistral")]
    Event.objects.all().delete()
    services.record_probe_results([ok(endpoint, model("llama3"), model("qwen2"))], now=NOW)
    assert [(e.kind, e.detail) for e in events()] == [("model_unloaded", {"model": "llama3"})]
    assert all(e.endpoint_id == endpoint.id and e.host == "127.0.0.1" for e in events())


def test_quiet_probes_record_nothing_and_cost_no_extra_query(endpoint, announced):
    services.record_probe_results([ok(endpoint, model("llama3"), latency=10)], now=NOW)
    announced.clear()
    with CaptureQueriesContext(connection) as ctx:
        services.record_probe_results([ok(endpoint, model("llama3"), latency=11)], now=NOW)
        services.record_probe_results([ok(endpoint, model("llama3"), latency=500)], now=NOW)  # latency only
    assert announced == [] and len(events()) == 3  # registered, status, model_added
    assert not any("registry_event" in q["sql"] for q in ctx.captured_queries)
    assert not any("registry_host" in q["sql"] for q in ctx.captured_queries)


def test_removal_names_the_token_that_removed(api, admin_token, endpoint):
    assert api.delete(f"/api/v1/endpoints/{endpoint.id}", admin_token).status_code == 204
    (removed,) = events("removed")
    assert removed.detail == {"by": "admin token 'ci-admin'"} and removed.endpoint_id == endpoint.id
    assert removed.endpoint_label == '"rack 3" (127.0.0.1:11434)'


def test_registration_over_rest_names_the_token_and_bulk_registration_each_endpoint(api, admin_token):
    reply = api.post("/api/v1/endpoints", [{"host": "127.0.0.2"}, {"host": "127.0.0.3", "port": 8080}], admin_token)
    assert reply.status_code == 201
    got = sorted((e.endpoint_label, e.detail["by"]) for e in events("registered"))
    assert got == [("127.0.0.2:11434", "admin token 'ci-admin'"), ("127.0.0.3:8080", "admin token 'ci-admin'")]


def test_admin_bulk_removal_names_the_user(endpoint):
    services.remove_endpoints([endpoint.id], by="user bob (admin)")
    (removed,) = events("removed")
    assert removed.detail == {"by": "user bob (admin)"} and removed.host == "127.0.0.1"


def report(host: str, ollama_url: str | None = None) -> SidecarReport:
    body = {"host": host, "hostname": host, "cpu_percent": 5, "ram_used_bytes": 1, "ram_total_bytes": 2}
    if ollama_url:
        body["ollama_url"] = ollama_url
    return SidecarReport.model_validate(body)


def test_a_sidecar_registering_its_ollama_is_recorded(db):
    services.record_report(report("gpu-01", "http://127.0.0.5:11434"), now=NOW)
    (registered,) = events("registered")
    assert registered.host == "gpu-01" and registered.detail == {"by": "sidecar of gpu-01"}
    assert registered.endpoint_label == "127.0.0.5:11434"
    services.record_report(report("gpu-01", "http://127.0.0.5:11434"), now=NOW + timedelta(seconds=10))
    assert len(events("registered")) == 1


def test_a_silent_sidecar_is_recorded_once_and_its_return_once(db, settings):
    settings.STALE_AFTER_SECONDS = 90
    services.record_report(report("gpu-01"), now=NOW)
    assert services.mark_silent_hosts(now=NOW + timedelta(seconds=60)) == []
    (silent,) = services.mark_silent_hosts(now=NOW + timedelta(seconds=100))
    assert silent.kind == "host_silent" and silent.host == "gpu-01"
    assert silent.detail == {"last_report_at": NOW.isoformat(), "silent_for": 100}
    assert services.mark_silent_hosts(now=NOW + timedelta(seconds=200)) == []  # once, not per check
    assert Host.objects.get(name="gpu-01").silent_since == NOW + timedelta(seconds=100)

    services.record_report(report("gpu-01"), now=NOW + timedelta(seconds=300))
    (back,) = events("host_back")
    assert back.detail == {"last_report_at": NOW.isoformat(), "silent_for": 300}
    assert back.at == NOW + timedelta(seconds=300)
    assert Host.objects.get(name="gpu-01").silent_since is None
    services.record_report(report("gpu-01"), now=NOW + timedelta(seconds=310))
    assert len(events("host_back")) == 1 and len(events("host_silent")) == 1


def test_a_host_that_never_reported_is_not_silent(db):
    Host.objects.create(name="never")
    assert services.mark_silent_hosts(now=NOW + timedelta(days=1)) == []


def test_the_beat_task_marks_silent_hosts(db, settings):
    from registry import tasks

    settings.STALE_AFTER_SECONDS = 1
    services.record_report(report("gpu-02"), now=datetime.now(UTC) - timedelta(seconds=30))
    assert tasks.find_silent_hosts() == 1
    assert [e.host for e in events("host_silent")] == ["gpu-02"]


def test_old_events_are_pruned(endpoint, settings):
    settings.EVENT_RETENTION_DAYS = 30
    Event.objects.create(kind="status", at=NOW - timedelta(days=31), endpoint_id=endpoint.id)
    Event.objects.create(kind="status", at=NOW - timedelta(days=29), endpoint_id=endpoint.id)
    assert services.prune_events(now=NOW) == 1
    assert Event.objects.filter(at__lt=NOW - timedelta(days=30)).count() == 0
