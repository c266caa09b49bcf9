"""Live: counters made in a Celery worker and in one daphne show in the scrape of another daphne."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from registry import services
from tests.live import LiveStack, wait_until
from tests.registry.test_metrics import counters  # noqa: F401 (autouse: empty counters to start)
from tests.registry.test_sidecar_report import URL, report

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]


def scrape(url: str, token: str) -> dict:
    response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text
    families = text_string_to_metric_families(response.text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_a_scrape_of_any_daphne_sums_the_counters_of_every_process(fake_fleet, tmp_path, admin_token):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # Daphne A with the worker (beat inside, a sweep a second in chunks of one endpoint); daphne B alone.
    first = LiveStack(tmp_path / "a", probe_interval=1.0, probe_on_register=False, PROBE_CHUNK_SIZE="1").start()
    second = LiveStack(tmp_path / "b", components=("daphne",)).start()
    try:
        services.register_endpoint(*fake_fleet.add(models=["llama3:8b"]))
        services.register_endpoint(*fake_fleet.add(mode="http500"))
        sidecar = services.create_token("sidecar", "gpu-01", host="gpu-01")[1]
        headers = {"Authorization": f"Bearer {sidecar}"}
        assert httpx.post(f"{first.url}{URL}", json=report(host="gpu-01"), headers=headers).status_code == 200
        assert httpx.post(f"{first.url}{URL}", json=report(host="gpu-02"), headers=headers).status_code == 403

        def counted() -> dict | None:
            samples = scrape(second.url, admin_token)
            done = (
                samples[("agentcom_probe_failures_total", (("reason", "http_status"),))] >= 2
                and samples[("agentcom_probe_sweep_duration_seconds_count", ())] >= 1
                and samples[("agentcom_sidecar_reports_accepted_total", ())] == 1
            )
            return samples if done else None

        samples = wait_until(counted, timeout=30, interval=0.5)
        assert samples, first.log("worker") + first.log("daphne")
        # The worker probed (durations, failures, sweeps); daphne A took the report; B serves it all.
        assert samples[("agentcom_probe_duration_seconds_count", ())] >= 4
        assert samples[("agentcom_sidecar_reports_refused_total", (("reason", "wrong_host"),))] == 1
        assert samples[("agentcom_endpoints", (("status", "healthy"),))] == 1
        assert samples[("agentcom_host_cpu_percent", (("host", "gpu-01"),))] == 41.5
        assert scrape(first.url, admin_token)[("agentcom_sidecar_reports_accepted_total", ())] == 1
    finally:
        second.stop()
        first.stop()
