"""A real sidecar process against a live hub (daphne): reports, auto endpoint, outages, revoked token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from registry import services, sidecar
from registry.models import Endpoint, ResourceSnapshot
from tests.live import LiveStack, free_port, wait_until
from tests.registry.test_sidecar_unit import TWO_GPUS, fake_nvml

pytestmark = [pytest.mark.django_db(transaction=True)]
BASE_DIR = Path(__file__).resolve().parents[2]


@pytest.fixture
def hub(tmp_path):
    stack = LiveStack(tmp_path, probe_on_register=False, components=("daphne",)).start()
    yield stack
    stack.stop()


@pytest.fixture
def token(db) -> str:
    return services.create_token("sidecar", "gpu-01")[1]


def sidecar_process(hub_url: str, token: str, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, AGENTCOM_TOKEN=token)
    out = open(log, "wb") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "registry.sidecar", "--hub", hub_url, *args],
        cwd=BASE_DIR,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def test_once_reports_resources_and_registers_the_local_ollama_as_auto(hub, token, fake_fleet):
    host, port = fake_fleet.add(models=["llama3"])
    ollama = f"http://{host}:{port}"
    proc = sidecar_process(hub.url, token, "--once", "--ollama-url", ollama, "--advertise-url", ollama)
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, output
    snapshot = services.build_snapshot()
    endpoint = snapshot["endpoints"][0]
    assert (endpoint["host"], endpoint["port"], endpoint["source"]) == (host, port, "auto")
    resources = snapshot["resources"][host]
    assert resources["ram_total_bytes"] > 0 and 0 <= resources["cpu_percent"] <= 100
    # This machine has no NVIDIA driver: VRAM is unknown, not zero.
    assert resources["vram_total_bytes"] is None and resources["gpus"] == []


def test_without_ollama_the_sidecar_still_reports_its_host(hub, token):
    dead = f"http://127.0.0.1:{free_port()}"
    proc = sidecar_process(hub.url, token, "--once", "--ollama-url", dead, "--host", "gpu-quiet")
    assert proc.wait(timeout=30) == 0
    assert not Endpoint.objects.exists()
    assert "gpu-quiet" in services.build_snapshot()["resources"]


def test_the_sidecar_keeps_reporting_at_its_interval(hub, token, tmp_path):
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
    try:
        assert wait_until(lambda: ResourceSnapshot.objects.count() >= 3, timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_the_sidecar_survives_a_hub_outage_and_recovers(token, tmp_path):
    stack = LiveStack(tmp_path, probe_on_register=False, components=("daphne",))
    log = tmp_path / "sidecar.log"
    proc = sidecar_process(
        stack.url,
        token,
        "--interval",
        "0.3",
        "--host",
        "gpu-patient",
        "--ollama-url",
        f"http://127.0.0.1:{free_port()}",
        log=log,
    )
    try:
        assert wait_until(lambda: log.exists() and "unreachable" in log.read_text(), timeout=10), log.read_text()
        stack.start()  # the hub comes up after the sidecar
        assert wait_until(lambda: ResourceSnapshot.objects.exists(), timeout=70), log.read_text()
        assert proc.poll() is None
        text = log.read_text()
        # One line per state change, not one per failed attempt.
        assert text.count("unreachable") == 1, text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        stack.stop()


def test_a_revoked_token_stops_the_sidecar_with_a_clear_message(hub, db):
    token, raw = services.create_token("sidecar", "old")
    services.revoke_tokens([token.id])
    proc = sidecar_process(hub.url, raw, "--interval", "0.3", "--host", "gpu-x")
    output = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 3
    assert "token" in output and "revoked" in output
    assert not ResourceSnapshot.objects.exists()


def test_with_nvml_the_report_carries_per_gpu_numbers(hub, token, monkeypatch):
    monkeypatch.setattr(sidecar, "_import_nvml", lambda: fake_nvml(TWO_GPUS))
    monkeypatch.setenv("AGENTCOM_TOKEN", token)
    code = sidecar.main(
        ["--hub", hub.url, "--once", "--host", "gpu-nv", "--ollama-url", f"http://127.0.0.1:{free_port()}"]
    )
    assert code == 0
    resources = services.build_snapshot()["resources"]["gpu-nv"]
    assert resources["vram_total_bytes"] == 104 * 1024**3
    assert resources["vram_used_bytes"] == 16 * 1024**3
    assert [g["name"] for g in resources["gpus"]] == ["NVIDIA GeForce RTX 4090", "NVIDIA A100-SXM4-80GB"]
    assert resources["gpus"][0]["utilization_percent"] == 37
