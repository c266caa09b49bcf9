"""GET /metrics: the Prometheus text format, the fleet as the database holds it, counters summed over
processes in Redis, and only for an admin or metrics token (or an allowed scraper address)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis
from django.conf import settings as django_settings
from django.db.models import F
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from registry import metrics, ollama, services, tasks
from registry import scrape as scraping
from registry.models import Endpoint, EndpointModel, Host, Token
from registry.schemas import SidecarReport
from tests.registry.test_sidecar_report import URL as REPORT_URL
from tests.registry.test_sidecar_report import report

GIB = 1024**3


@pytest.fixture(autouse=True)
def counters():
    """Each test starts from empty counters in this run's namespace."""
    metrics.tally.flush()  # whatever earlier tests counted goes out now, then is deleted
    scraping.forget_cache()
    client = metrics.tally.redis()
    keys = list(client.scan_iter(f"{django_settings.AGENTCOM_NAMESPACE}:metrics:*"))
    if keys:
        client.delete(*keys)
    yield client


@pytest.fixture
def metrics_token(db) -> str:
    return services.create_token(Token.Scope.METRICS, "prometheus")[1]


def scrape(token: str | None, client: Client | None = None, **extra) -> dict:
    """The scrape as {(sample name, ((label, value), ...)): value}, after this process flushed."""
    metrics.tally.flush()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    response = (client or Client()).get("/metrics", **headers, **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    families = text_string_to_metric_families(response.content.decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def endpoint_labels(endpoint: Endpoint) -> tuple:
    labels = {"host": endpoint.host.name, "address": endpoint.address, "port": str(endpoint.port)}
    return tuple(sorted({**labels, "name": endpoint.name}.items()))


def reason(value: str) -> tuple:
    return (("reason", value),)


# -- the fleet, from the database ---------------------------------------------------------------


@pytest.mark.django_db
def test_a_scrape_shows_endpoints_by_status_and_whether_each_one_is_up(admin_token):
    healthy, _ = services.register_endpoint("127.0.0.2", 11434, "rack 1")
    sick, _ = services.register_endpoint("127.0.0.3", 11500)
    new, _ = services.register_endpoint("127.0.0.4")
    Endpoint.objects.filter(id=healthy.id).update(status="healthy", revision=F("revision") + 1)  # as a probe would
    Endpoint.objects.filter(id=sick.id).update(status="unhealthy", revision=F("revision") + 1)
    for name, loaded in (("llama3:8b", True), ("mistral:7b", False), ("qwen2:7b", False)):
        EndpointModel.objects.create(endpoint=healthy, name=name, loaded=loaded)

    samples = scrape(admin_token)

    assert samples[("agentcom_endpoints", (("status", "healthy"),))] == 1
    assert samples[("agentcom_endpoints", (("status", "unhealthy"),))] == 1
    assert samples[("agentcom_endpoints", (("status", "unknown"),))] == 1
    healthy, sick, new = (Endpoint.objects.get(id=e.id) for e in (healthy, sick, new))
    assert samples[("agentcom_endpoint_up", endpoint_labels(healthy))] == 1
    assert samples[("agentcom_endpoint_up", endpoint_labels(sick))] == 0
    assert samples[("agentcom_endpoint_up", endpoint_labels(new))] == 0
    assert dict(endpoint_labels(healthy)) == {"host": "127.0.0.2", "address": "127.0.0.2", "port": "11434",
                                              "name": "rack 1"}  # fmt: skip
    assert samples[("agentcom_endpoint_models", endpoint_labels(healthy))] == 3
    assert samples[("agentcom_endpoint_models_loaded", endpoint_labels(healthy))] == 1
    assert samples[("agentcom_endpoint_models", endpoint_labels(sick))] == 0
    # The fleet's models, counted as the dashboard's chips count them (healthy endpoints' hosts).
    assert samples[("agentcom_model_hosts", (("model", "llama3:8b"),))] == 1
    assert samples[("agentcom_model_loaded_hosts", (("model", "llama3:8b"),))] == 1
    assert samples[("agentcom_model_loaded_hosts", (("model", "mistral:7b"),))] == 0


@pytest.mark.django_db
def test_a_removed_endpoint_leaves_the_scrape(admin_token):
    endpoint, _ = services.register_endpoint("127.0.0.2")
    labels = endpoint_labels(Endpoint.objects.get(id=endpoint.id))
    assert ("agentcom_endpoint_up", labels) in scrape(admin_token)
    services.remove_endpoint(endpoint.id)
    samples = scrape(admin_token)
    assert ("agentcom_endpoint_up", labels) not in samples
    assert samples[("agentcom_endpoints", (("status", "unknown"),))] == 0


@pytest.mark.django_db
def test_host_resources_and_report_age_match_the_last_report(admin_token):
    now = timezone.now()
    services.record_report(SidecarReport.model_validate(report(host="gpu-01", cpu_percent=41.5)), now=now)
    services.record_report(
        SidecarReport.model_validate(report(host="cpu-only", vram_used_bytes=None, vram_total_bytes=None, gpus=[])),
        now=now,
    )
    services.record_report(SidecarReport.model_validate(report(host="gone", cpu_percent=99.0)), now=now)
    Host.objects.filter(name="gone").update(
        last_report_at=now - timedelta(seconds=django_settings.STALE_AFTER_SECONDS + 60)
    )
    services.register_endpoint("127.0.0.2")  # its host never reported

    samples = scrape(admin_token)

    gpu = (("host", "gpu-01"),)
    assert samples[("agentcom_host_cpu_percent", gpu)] == 41.5
    assert samples[("agentcom_host_ram_used_bytes", gpu)] == 20 * GIB
    assert samples[("agentcom_host_ram_total_bytes", gpu)] == 64 * GIB
    assert samples[("agentcom_host_vram_used_bytes", gpu)] == 30 * GIB
    assert samples[("agentcom_host_vram_total_bytes", gpu)] == 80 * GIB
    assert 0 <= samples[("agentcom_host_report_age_seconds", gpu)] < 60
    # No GPU: no VRAM series (not a 0 of 0).
    assert ("agentcom_host_vram_total_bytes", (("host", "cpu-only"),)) not in samples
    assert samples[("agentcom_host_cpu_percent", (("host", "cpu-only"),))] == 41.5
    # A silent host: its age grows, its last numbers are not shown as its state now.
    gone = (("host", "gone"),)
    assert ("agentcom_host_cpu_percent", gone) not in samples
    assert samples[("agentcom_host_report_age_seconds", gone)] >= django_settings.STALE_AFTER_SECONDS + 60
    assert samples[("agentcom_hosts", (("state", "reporting"),))] == 2
    assert samples[("agentcom_hosts", (("state", "stale"),))] == 1
    assert samples[("agentcom_hosts", (("state", "never"),))] == 1


# -- counters ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_probes_count_their_durations_and_failures_by_reason(fake_fleet, admin_token):
    modes = ["healthy", "healthy", "http500", "refused", "invalid_json", "redirect"]
    ids = [services.register_endpoint(*fake_fleet.add(mode=mode))[0].id for mode in modes]
    before = scrape(admin_token)
    assert before[("agentcom_probe_duration_seconds_count", ())] == 0

    services.probe(ids)
    samples = scrape(admin_token)

    assert samples[("agentcom_probe_duration_seconds_count", ())] == 6
    assert samples[("agentcom_probe_duration_seconds_bucket", (("le", "+Inf"),))] == 6
    assert samples[("agentcom_probe_duration_seconds_sum", ())] > 0
    assert samples[("agentcom_probe_failures_total", reason("http_status"))] == 2  # HTTP 500, redirect
    assert samples[("agentcom_probe_failures_total", reason("refused"))] == 1
    assert samples[("agentcom_probe_failures_total", reason("bad_reply"))] == 1
    assert samples[("agentcom_probe_failures_total", reason("timeout"))] == 0


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("timed out after 5 s", "timeout"),
        ("connection timed out", "timeout"),
        ("connection refused", "refused"),
        ("host unreachable", "unreachable"),
        ("name does not resolve", "dns"),
        ("HTTP 503", "http_status"),
        ("redirect refused", "http_status"),
        ("reply is not valid JSON", "bad_reply"),
        ("reply larger than 1 MiB", "bad_reply"),
        ("connection closed by the server", "bad_reply"),
        ("address not allowed", "not_allowed"),
        ("certificate not trusted", "tls"),
        ("certificate does not match the host name", "tls"),
        ("TLS handshake failed", "tls"),
        ("connection failed", "other"),
    ],
)
def test_every_probe_error_has_one_reason_from_a_fixed_set(error, expected):
    assert ollama.failure_reason(error) == expected
    assert expected in ollama.FAILURE_REASONS


@pytest.mark.django_db
def test_a_sweep_is_timed_from_its_start_to_its_last_chunk(fake_fleet, admin_token):
    ids = [services.register_endpoint(*fake_fleet.add())[0].id for _ in range(2)]
    metrics.sweep_started("s1", 2)
    tasks.probe_endpoints([ids[0]], sweep="s1")
    assert scrape(admin_token)[("agentcom_probe_sweep_duration_seconds_count", ())] == 0  # one chunk still out
    tasks.probe_endpoints([ids[1]], sweep="s1")
    samples = scrape(admin_token)
    assert samples[("agentcom_probe_sweep_duration_seconds_count", ())] == 1
    assert samples[("agentcom_probe_sweep_duration_seconds_sum", ())] > 0
    assert samples[("agentcom_probe_duration_seconds_count", ())] == 2
    assert samples[("agentcom_probe_sweeps_unfinished_total", ())] == 0


@pytest.mark.django_db
def test_a_sweep_whose_chunk_never_ran_is_counted_as_unfinished(admin_token):
    metrics.sweep_started("s1", 2)
    metrics.sweep_chunk_done("s1")  # the other chunk expired in the queue: s1 never finishes
    metrics.sweep_started("s2", 1)
    metrics.tally.flush()
    samples = scrape(admin_token)
    assert samples[("agentcom_probe_sweeps_unfinished_total", ())] == 1
    assert samples[("agentcom_probe_sweep_duration_seconds_count", ())] == 0


@pytest.mark.django_db
def test_reports_count_as_accepted_and_refused_by_error_code(api, admin_token):
    bound = services.create_token(Token.Scope.SIDECAR, "gpu-01", host="gpu-01")[1]
    assert api.post(REPORT_URL, report(host="gpu-01"), bound).status_code == 200
    assert api.post(REPORT_URL, report(host="gpu-01"), bound).status_code == 200
    assert api.post(REPORT_URL, report(host="gpu-02"), bound).status_code == 403
    assert api.post(REPORT_URL, report(host="gpu-01")).status_code == 401
    assert api.post(REPORT_URL, report(host="gpu-01", cpu_percent="lots"), bound).status_code == 400

    samples = scrape(admin_token)

    assert samples[("agentcom_sidecar_reports_accepted_total", ())] == 2
    assert samples[("agentcom_sidecar_reports_refused_total", reason("wrong_host"))] == 1
    assert samples[("agentcom_sidecar_reports_refused_total", reason("unauthorized"))] == 1
    assert samples[("agentcom_sidecar_reports_refused_total", reason("invalid_input"))] == 1
    assert samples[("agentcom_sidecar_reports_refused_total", reason("overloaded"))] == 0


@pytest.mark.django_db
def test_errors_on_other_routes_do_not_count_as_refused_reports(api, admin_token):
    assert api.get("/api/v1/endpoints").status_code == 401
    samples = scrape(admin_token)
    assert samples[("agentcom_sidecar_reports_refused_total", reason("unauthorized"))] == 0


@pytest.mark.django_db
def test_counters_of_two_processes_add_up_whichever_one_is_scraped(admin_token, monkeypatch):
    # Two Tally objects are two processes (a daphne and a worker): each flushes its own sums.
    daphne, worker = metrics.Tally(), metrics.Tally()
    for tally in (daphne, worker):
        monkeypatch.setattr(tally, "_started", lambda: None)  # flushed by hand here, no thread
    daphne.add(metrics.REPORTS_ACCEPTED, 3)
    worker.add(metrics.REPORTS_ACCEPTED, 4)
    daphne.observe(metrics.PROBE_DURATION, [0.02])
    worker.observe(metrics.PROBE_DURATION, [0.2, 3.0])
    daphne.socket_change(+2)
    worker.socket_change(+1)
    daphne.flush()
    worker.flush()

    samples = scrape(admin_token)

    assert samples[("agentcom_sidecar_reports_accepted_total", ())] == 7
    assert samples[("agentcom_probe_duration_seconds_count", ())] == 3
    assert samples[("agentcom_probe_duration_seconds_bucket", (("le", "0.025"),))] == 1
    assert samples[("agentcom_probe_duration_seconds_bucket", (("le", "0.25"),))] == 2
    assert samples[("agentcom_probe_duration_seconds_bucket", (("le", "5.0"),))] == 3
    assert samples[("agentcom_probe_duration_seconds_sum", ())] == pytest.approx(3.22)
    assert samples[("agentcom_dashboard_sockets_open", ())] == 3

    # A later flush adds to what is there; a process whose sockets all closed stops counting.
    worker.add(metrics.REPORTS_ACCEPTED, 1)
    worker.socket_change(-1)
    worker.flush()
    samples = scrape(admin_token)
    assert samples[("agentcom_sidecar_reports_accepted_total", ())] == 8
    assert samples[("agentcom_dashboard_sockets_open", ())] == 2


@pytest.mark.django_db
def test_the_sockets_of_a_process_that_died_stop_counting_by_themselves(admin_token, monkeypatch):
    monkeypatch.setattr(metrics, "SOCKETS_TTL_SECONDS", 1)
    alive, dead = metrics.Tally(), metrics.Tally()
    for tally in (alive, dead):
        monkeypatch.setattr(tally, "_started", lambda: None)
        tally.socket_change(+2)
        tally.flush()
    assert scrape(admin_token)[("agentcom_dashboard_sockets_open", ())] == 4
    # `dead` never flushes again (killed); `alive` keeps refreshing its key.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive.flush()
        if scrape(admin_token)[("agentcom_dashboard_sockets_open", ())] == 2:
            break
        time.sleep(0.1)
    assert scrape(admin_token)[("agentcom_dashboard_sockets_open", ())] == 2


@pytest.mark.django_db
def test_counts_made_while_redis_is_away_are_sent_once_it_answers(admin_token, monkeypatch):
    tally = metrics.Tally()
    monkeypatch.setattr(tally, "_started", lambda: None)
    tally.add(metrics.PUBLISHER_EVENTS, 5)
    tally.client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)  # nothing listens
    tally.flush()
    tally.client = None
    tally.add(metrics.PUBLISHER_EVENTS, 1)
    tally.flush()
    assert scrape(admin_token)[("agentcom_publisher_events_total", ())] == 6


@pytest.mark.django_db
def test_without_redis_the_scrape_still_shows_the_fleet(admin_token, monkeypatch):
    services.register_endpoint("127.0.0.2")
    monkeypatch.setattr(metrics.tally, "client", redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    monkeypatch.setattr(metrics.tally, "flush", lambda: None)
    samples = scrape(admin_token)
    assert samples[("agentcom_metrics_redis_up", ())] == 0
    assert samples[("agentcom_endpoints", (("status", "unknown"),))] == 1
    assert ("agentcom_sidecar_reports_accepted_total", ()) not in samples  # left out, not a reset to 0


# -- who may scrape ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_without_credentials_the_scrape_is_refused_with_401_json():
    response = Client().get("/metrics")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"] == "unauthorized"
    assert "admin or metrics token" in response.json()["detail"]


@pytest.mark.django_db
def test_another_method_is_refused_with_405_json(admin_token):
    response = Client().post("/metrics", HTTP_AUTHORIZATION=f"Bearer {admin_token}")
    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
    assert response.json()["error"] == "method_not_allowed"


@pytest.mark.django_db
def test_a_sidecar_token_is_refused_with_403(sidecar_token):
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {sidecar_token}")
    assert response.status_code == 403
    assert response.json() == {
        "error": "forbidden",
        "detail": "a sidecar token may not read /metrics; use an admin or metrics token.",
    }


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["Bearer agc_adm_made-up", "Basic YWRtaW46YWRtaW4="])
def test_a_wrong_token_or_scheme_is_refused_with_401(header, revoked_token):
    assert Client().get("/metrics", HTTP_AUTHORIZATION=header).status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {revoked_token}").status_code == 401


@pytest.mark.django_db
def test_admin_and_metrics_tokens_may_scrape(admin_token, metrics_token):
    assert ("agentcom_metrics_redis_up", ()) in scrape(admin_token)
    assert ("agentcom_metrics_redis_up", ()) in scrape(metrics_token)


@pytest.mark.django_db
def test_a_metrics_token_may_not_use_the_api(api, metrics_token):
    response = api.get("/api/v1/endpoints", metrics_token)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


@pytest.mark.django_db
def test_an_allowed_scraper_address_needs_no_token(settings):
    settings.METRICS_ALLOWED_IPS = "198.51.100.0/24, 192.0.2.10/32"
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    assert ("agentcom_metrics_redis_up", ()) in scrape(None, REMOTE_ADDR="192.0.2.10")
    assert Client().get("/metrics", REMOTE_ADDR="192.0.2.11").status_code == 401


@pytest.mark.django_db
def test_the_allow_list_is_off_by_default():
    assert django_settings.METRICS_ALLOWED_IPS == ""
    assert Client().get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401


@pytest.mark.django_db
def test_the_fleet_is_read_in_a_fixed_number_of_queries(admin_token, django_assert_max_num_queries):
    def fleet(n: int) -> None:
        for i in range(n):
            endpoint, _ = services.register_endpoint(f"127.0.1.{len(Endpoint.objects.all()) + 1}")
            EndpointModel.objects.create(endpoint=endpoint, name=f"m{i}", loaded=bool(i % 2))
            services.record_report(SidecarReport.model_validate(report(host=endpoint.host.name)))

    fleet(2)
    with django_assert_max_num_queries(5):  # the endpoints' mark, endpoints, models, fleet models, hosts
        scraping.render()
    fleet(20)
    with django_assert_max_num_queries(5):
        scraping.render()
    with django_assert_max_num_queries(2):  # endpoints unchanged: their text is kept
        scraping.render()


@pytest.mark.django_db
def test_a_probe_that_changes_an_endpoint_shows_in_the_next_scrape(fake_fleet, admin_token):
    host, port = fake_fleet.add(models=["llama3:8b", "mistral:7b"], loaded=["llama3:8b"])
    endpoint, _ = services.register_endpoint(host, port)
    labels = endpoint_labels(Endpoint.objects.get(id=endpoint.id))
    assert scrape(admin_token)[("agentcom_endpoint_up", labels)] == 0
    services.probe([endpoint.id])
    samples = scrape(admin_token)
    assert samples[("agentcom_endpoint_up", labels)] == 1
    assert samples[("agentcom_endpoint_models", labels)] == 2
    assert samples[("agentcom_endpoint_models_loaded", labels)] == 1
    fake_fleet.set(host, port, mode="http500")
    for _ in range(django_settings.UNHEALTHY_AFTER_FAILURES):
        services.probe([endpoint.id])
    assert scrape(admin_token)[("agentcom_endpoint_up", labels)] == 0
    services.update_endpoint(endpoint.id, name="rack 9")
    renamed = endpoint_labels(Endpoint.objects.get(id=endpoint.id))
    assert ("agentcom_endpoint_up", renamed) in scrape(admin_token)


# -- the docs ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_documented_alert_and_scrape_config_match_what_the_hub_serves(admin_token):
    yaml = pytest.importorskip("yaml")
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    rule = yaml.safe_load((docs / "alerts.yml").read_text())["groups"][0]["rules"][0]
    assert (rule["alert"], rule["for"]) == ("OllamaEndpointDown", "2m")
    assert rule["expr"].split()[0] == "agentcom_endpoint_up"
    services.register_endpoint("127.0.0.2")
    assert any(name == "agentcom_endpoint_up" for name, _ in scrape(admin_token))
    job = yaml.safe_load((docs / "prometheus.yml").read_text())["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]


@pytest.mark.django_db
def test_a_new_report_shows_in_the_next_scrape(admin_token):
    services.record_report(SidecarReport.model_validate(report(host="gpu-01", cpu_percent=10.0)))
    assert scrape(admin_token)[("agentcom_host_cpu_percent", (("host", "gpu-01"),))] == 10.0
    services.record_report(
        SidecarReport.model_validate(report(host="gpu-01", cpu_percent=20.0, ram_total_bytes=128 * GIB))
    )
    samples = scrape(admin_token)
    assert samples[("agentcom_host_cpu_percent", (("host", "gpu-01"),))] == 20.0
    assert samples[("agentcom_host_ram_total_bytes", (("host", "gpu-01"),))] == 128 * GIB
    assert samples[("agentcom_host_ram_used_bytes", (("host", "gpu-01"),))] == 20 * GIB
