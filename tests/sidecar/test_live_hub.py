"""A real sidecar process against a live hub (daphne): reports, auto endpoint, outages, revoked token.

Reports are checked the way an operator sees them, through the hub's `GET /api/v1/snapshot`
(`resources[host]`), not by counting history rows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agentcom_sidecar import agent
from registry import services
from registry.models import Endpoint
from tests.live import LiveStack, free_port, wait_until
from tests.sidecar.fakes import TWO_GPUS, fake_nvml

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]
BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub(tmp_path):
    stack = LiveStack(tmp_path, probe_on_register=False, components=("daphne",)).start()
    yield stack
    stack.stop()


@pytest.fixture
def token(db) -> str:
    return services.create_token("sidecar", "gpu-01")[1]


@pytest.fixture
def resources_of(db):
    """Return a function: host name -> its latest resources as `GET /api/v1/snapshot` shows them (or None)."""
    admin = services.create_token("admin", "reader")[1]

    def read(stack: LiveStack, host: str) -> dict | None:
        try:
            response = httpx.get(
                f"{stack.url}/api/v1/snapshot", headers={"Authorization": f"Bearer {admin}"}, timeout=10
            )
        except httpx.TransportError:  # the hub is not up (yet)
            return None
        response.raise_for_status()
        return response.json()["resources"].get(host)

    return read


def sidecar_process(hub_url: str, token: str, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, AGENTCOM_TOKEN=token)
    out = open(log, "wb") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "agentcom_sidecar", "--hub", hub_url, *args],
        cwd=BASE_DIR,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def test_once_reports_resources_and_registers_the_local_ollama_as_auto(hub, token, fake_fleet, resources_of):
    host, port = fake_fleet.add(models=["llama3"])
    ollama = f"http://{host}:{port}"
    proc = sidecar_process(hub.url, token, "--once", "--ollama-url", ollama, "--advertise-url", ollama)
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    endpoint = services.build_snapshot()["endpoints"][0]
    assert (endpoint["host"], endpoint["port"], endpoint["source"]) == (host, port, "auto")
    resources = resources_of(hub, host)
    assert resources["ram_total_bytes"] > 0 and 0 <= resources["cpu_percent"] <= 100
    # This machine has no NVIDIA driver: VRAM is unknown, not zero.
    assert resources["vram_total_bytes"] is None and resources["gpus"] == []


def test_without_ollama_the_sidecar_still_reports_its_host(hub, token, resources_of):
    dead = f"http://127.0.0.1:{free_port()}"
    proc = sidecar_process(hub.url, token, "--once", "--ollama-url", dead, "--host", "gpu-quiet")
    assert proc.wait(timeout=30) == 0
    assert not Endpoint.objects.exists()
    assert resources_of(hub, "gpu-quiet") is not None


def test_the_sidecar_keeps_reporting_at_its_interval(hub, token, tmp_path, resources_of):
    proc = sidecar_process(
        hub.url,
        token,
        "--interval",
        "0.3",
        "--host",
        "gpu-loop",
        "--ollama-url",
        f"http://127.0.0.1:{free_port()}",
        log=tmp_path / "sidecar.log",
    )
    seen: set[str] = set()

    def third_report_arrived() -> bool:
        resources = resources_of(hub, "gpu-loop")
        if resources:
            seen.add(resources["reported_at"])
        return len(seen) >= 3

    try:
        assert wait_until(third_report_arrived, timeout=20), (tmp_path / "sidecar.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_the_sidecar_survives_a_hub_outage_and_recovers(token, tmp_path, resources_of):
    stack = LiveStack(tmp_path, probe_on_register=False, components=("daphne",))
    log = tmp_path / "sidecar.log"
    proc = sidecar_process(
        stack.url,
        token,
        "--interval",
        "0.3",
        # Cap the random backoff so that the test's length does not depend on it (default 60 s).
        "--max-backoff",
        "0.5",
        "--host",
        "gpu-patient",
        "--ollama-url",
        f"http://127.0.0.1:{free_port()}",
        log=log,
    )
    try:
        assert wait_until(lambda: log.exists() and "unreachable" in log.read_text(), timeout=10), log.read_text()
        stack.start()  # the hub comes up after the sidecar
        assert wait_until(lambda: resources_of(stack, "gpu-patient") is not None, timeout=20), log.read_text()
        assert proc.poll() is None
        text = log.read_text()
        # One line per state change, not one per failed attempt.
        assert text.count("unreachable") == 1, text
        assert text.count("hub accepts reports again") == 1, text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        stack.stop()


def test_a_revoked_token_stops_the_sidecar_with_a_clear_message(hub, db, resources_of):
    token, raw = services.create_token("sidecar", "old")
    services.revoke_tokens([token.id])
    proc = sidecar_process(hub.url, raw, "--interval", "0.3", "--host", "gpu-x")
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 3
    assert "token" in output and "revoked" in output
    assert resources_of(hub, "gpu-x") is None


def test_with_nvml_the_report_carries_per_gpu_numbers(hub, token, monkeypatch, resources_of):
    monkeypatch.setattr(agent, "_import_nvml", lambda: fake_nvml(TWO_GPUS))
    monkeypatch.setenv("AGENTCOM_TOKEN", token)
    code = agent.main(
        ["--hub", hub.url, "--once", "--host", "gpu-nv", "--ollama-url", f"http://127.0.0.1:{free_port()}"]
    )
    assert code == 0
    resources = resources_of(hub, "gpu-nv")
    assert resources["vram_total_bytes"] == 104 * 1024**3
    assert resources["vram_used_bytes"] == 16 * 1024**3
    assert [g["name"] for g in resources["gpus"]] == ["NVIDIA GeForce RTX 4090", "NVIDIA A100-SXM4-80GB"]
    assert resources["gpus"][0]["utilization_percent"] == 37
