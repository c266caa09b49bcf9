"""A probe run against the fake Ollama fleet: every failure mode, status rules, write on change."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry import services, signals
from registry.models import Endpoint
from registry.services import probe as run_probes


@pytest.fixture
def events():
    seen: list[list[int]] = []

    def _record(sender, ids, **kwargs):
        seen.append(list(ids))

    signals.endpoints_changed.connect(_record)
    yield seen
    signals.endpoints_changed.disconnect(_record)


def register(fake_fleet, mode="healthy", **kwargs) -> Endpoint:
    host, port = fake_fleet.add(mode=mode, **kwargs)
    endpoint, _ = services.register_endpoint(host, port)
    return endpoint


def probe(endpoint: Endpoint) -> Endpoint:
    run_probes([endpoint.id])
    endpoint.refresh_from_db()
    return endpoint


def test_healthy_endpoint_shows_models_loaded_flags_version_and_latency(db, fake_fleet):
    endpoint = probe(register(fake_fleet, models=["llama3:8b", "mistral:7b"], loaded=["llama3:8b"]))
    assert endpoint.status == "healthy"
    assert endpoint.version and endpoint.latency_ms is not None and endpoint.last_checked_at
    models = {m.name: m for m in endpoint.models.all()}
    assert set(models) == {"llama3:8b", "mistral:7b"}
    assert models["llama3:8b"].loaded and models["llama3:8b"].size_vram
    assert not models["mistral:7b"].loaded
    assert models["llama3:8b"].family and models["llama3:8b"].quantization


def test_old_ollama_without_api_ps_is_still_healthy(db, fake_fleet):
    endpoint = probe(register(fake_fleet, mode="no_ps", models=["llama3"]))
    assert endpoint.status == "healthy"
    assert [m.name for m in endpoint.models.all()] == ["llama3"]


def test_slow_endpoint_within_the_deadline_is_healthy(db, fake_fleet):
    assert probe(register(fake_fleet, mode="slow", delay=0.1, models=["llama3"])).status == "healthy"


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("hang", "timed out after 1 s"),
        ("http500", "HTTP 500"),
        ("invalid_json", "reply is not valid JSON"),
        ("oversized", "reply larger than 1 MiB"),
        ("redirect", "redirect refused"),
        ("refused", "connection refused"),
    ],
)
def test_failing_endpoint_turns_unhealthy_after_two_failed_probes_with_a_reason(db, fake_fleet, mode, error):
    endpoint = register(fake_fleet, mode=mode)
    first = probe(endpoint)
    assert (first.status, first.consecutive_failures, first.last_error) == ("unknown", 1, error)
    second = probe(endpoint)
    assert (second.status, second.consecutive_failures) == ("unhealthy", 2)


def test_unhealthy_endpoint_recovers_on_first_success_and_events_fire_once_per_change(db, fake_fleet, events):
    endpoint = register(fake_fleet, models=["llama3"])
    events.clear()
    assert probe(endpoint).status == "healthy"
    assert events == [[endpoint.id]]
    host, port = endpoint.address, endpoint.port
    fake_fleet.set(host, port, mode="http500")
    probe(endpoint)
    assert probe(endpoint).status == "unhealthy"
    fake_fleet.set(host, port, mode="healthy")
    recovered = probe(endpoint)
    assert (recovered.status, recovered.consecutive_failures, recovered.last_error) == ("healthy", 0, "")


def test_unchanged_probe_result_does_not_rewrite_the_endpoint_or_its_models(db, fake_fleet, events):
    endpoint = register(fake_fleet, models=["llama3", "mistral"], loaded=["llama3"])
    probe(endpoint)
    events.clear()
    with CaptureQueriesContext(connection) as ctx:
        changed = run_probes([endpoint.id])
    writes = [q["sql"] for q in ctx.captured_queries if q["sql"].split()[0] in ("UPDATE", "INSERT", "DELETE")]
    assert changed == [] and events == []
    # The lease (claim and release), the one bulk last_checked_at statement and the chunk's one
    # latency sample for history; nothing else.
    assert len(writes) == 4, writes
    assert not any("registry_endpointmodel" in w for w in writes)
    assert sum("registry_latencysample" in w for w in writes) == 1


def test_models_changing_on_the_endpoint_are_synchronised(db, fake_fleet):
    endpoint = register(fake_fleet, models=["llama3", "mistral"])
    probe(endpoint)
    fake_fleet.set(endpoint.address, endpoint.port, models=["llama3", "qwen2"], loaded=["qwen2"])
    probe(endpoint)
    models = {m.name: m.loaded for m in endpoint.models.all()}
    assert models == {"llama3": False, "qwen2": True}


def test_endpoint_outside_the_allowed_networks_is_refused_at_probe_time(db, fake_fleet, settings):
    endpoint = register(fake_fleet, models=["llama3"])
    settings.REGISTRY_ALLOWED_NETWORKS = "10.0.0.0/8"
    first = probe(endpoint)
    assert first.last_error == "address not allowed"
    assert not first.models.exists()


def test_a_name_resolving_to_loopback_is_refused_when_loopback_is_not_allowed(db, fake_fleet, settings):
    host, port = fake_fleet.add(models=["llama3"])
    endpoint, _ = services.register_endpoint("localhost", port)
    settings.REGISTRY_ALLOWED_NETWORKS = "10.0.0.0/8"
    assert probe(endpoint).last_error == "address not allowed"


def test_dead_endpoints_do_not_delay_healthy_ones_in_one_run(db, fake_fleet):
    healthy = [register(fake_fleet, models=["llama3"]) for _ in range(5)]
    hanging = [register(fake_fleet, mode="hang") for _ in range(5)]
    run_probes(None)
    for endpoint in healthy:
        endpoint.refresh_from_db()
        assert endpoint.status == "healthy" and endpoint.latency_ms < 500
    for endpoint in hanging:
        endpoint.refresh_from_db()
        assert endpoint.last_error == "timed out after 1 s"


def test_an_endpoint_leased_by_another_run_is_not_probed_twice(db, fake_fleet):
    endpoint = register(fake_fleet, models=["llama3"])
    claim, targets = services.claim_for_probe([endpoint.id])
    assert [t.id for t in targets] == [endpoint.id]
    assert run_probes([endpoint.id]) == []  # leased: skipped
    endpoint.refresh_from_db()
    assert endpoint.last_checked_at is None
    services.release_claim(claim)
    assert run_probes([endpoint.id]) == [endpoint.id]


def test_a_reply_with_an_impossible_size_is_a_failure_with_a_reason():
    from registry.ollama import OllamaError, TagsReply, parse_reply

    body = '{"models": [{"name": "huge", "size": 18446744073709551616}]}'
    with pytest.raises(OllamaError, match="does not match"):
        parse_reply(body, TagsReply)


def test_one_endpoint_that_cannot_be_stored_does_not_lose_the_rest_of_the_batch(db, fake_fleet):
    from django.utils import timezone

    from registry.ollama import ModelInfo, ProbeResult

    bad = register(fake_fleet, models=["llama3"])
    good = register(fake_fleet, models=["llama3"])
    now = timezone.now()

    def result(endpoint, size):
        model = ModelInfo("m\x00odel", "", size, "", "", "", None, False, None, None)
        return ProbeResult(endpoint.id, True, "", 5, "0.5.7", (model,), now)

    changed = services.record_probe_results([result(bad, 2**64), result(good, 10)])
    assert changed == [good.id]
    good.refresh_from_db()
    assert good.status == "healthy"
    assert [m.name for m in good.models.all()] == ["model"]  # NUL dropped, as PostgreSQL needs


@pytest.mark.django_db
def test_a_sweep_is_spread_over_the_interval_and_covers_every_endpoint_once(settings):
    """1,000 probes in one burst take the CPU from the report path: chunks start evenly across
    PROBE_SPREAD_FRACTION of the interval, and every endpoint is in exactly one chunk."""
    settings.PROBE_INTERVAL_SECONDS, settings.PROBE_SPREAD_FRACTION, settings.PROBE_CHUNK_SIZE = 15.0, 0.5, 100
    host = services.register_endpoint("127.0.0.1", 1)[0].host
    Endpoint.objects.bulk_create(Endpoint(host=host, address="127.0.0.1", port=p) for p in range(2, 251))
    plan = services.sweep_plan()
    assert [delay for delay, _ in plan] == [0.0, 2.5, 5.0]
    ids = [i for _, chunk in plan for i in chunk]
    assert sorted(ids) == sorted(Endpoint.objects.values_list("id", flat=True)) and len(ids) == 250

    settings.PROBE_SPREAD_FRACTION = 0.0
    assert {delay for delay, _ in services.sweep_plan()} == {0.0}
