"""The real `agentcom-sidecar` command line, as a subprocess, against a real HTTP server playing the hub."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from agentcom_sidecar.report import SidecarReport
from tests.sidecar.fakes import FakeHub, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def sidecar_env(token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("AGENTCOM_TOKEN", None)
    if token is not None:
        env["AGENTCOM_TOKEN"] = token
    return env


def run_sidecar(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentcom_sidecar", *args],
        cwd=REPO_ROOT,
        env=sidecar_env(token),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dry_run_prints_a_valid_report_as_json_and_needs_no_token_and_no_hub():
    result = run_sidecar("--dry-run", "--ollama-url", f"http://127.0.0.1:{free_port()}")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    SidecarReport.model_validate(report)
    assert report["hostname"] == socket.gethostname()
    assert "ollama_url" not in report


def test_a_missing_token_exits_2_with_a_message_naming_the_variable():
    result = run_sidecar("--hub", "http://127.0.0.1:9", "--once")

    assert result.returncode == 2
    assert "AGENTCOM_TOKEN" in result.stderr


def test_an_unreadable_token_file_exits_2(tmp_path):
    result = run_sidecar("--hub", "http://127.0.0.1:9", "--token-file", str(tmp_path / "nope"))

    assert result.returncode == 2
    assert "token file" in result.stderr


def test_an_advertise_url_the_hub_would_refuse_exits_2_before_any_report():
    # split_host takes a zone id, the report's published ollama_url pattern does not.
    result = run_sidecar("--hub", "http://127.0.0.1:9", "--once", "--advertise-url", "http://[fe80::1%eth0]:11434")

    assert result.returncode == 2
    assert "ollama_url must be a URL" in result.stderr


def test_a_refused_token_exits_3_with_a_message_about_the_token():
    with FakeHub(report_status=401) as hub:
        result = run_sidecar("--hub", hub.url, "--once", "--ollama-url", hub.url, token="wrong")

    assert result.returncode == 3
    assert "token is wrong or revoked" in result.stderr
    assert hub.authorizations == ["Bearer wrong"]


def test_an_accepted_report_exits_0_and_the_hub_receives_a_valid_report(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("sidecar-token-from-file\n")

    with FakeHub(report_status=200) as hub:
        result = run_sidecar(
            "--hub", hub.url + "/",
            "--once",
            "--ollama-url", hub.url,  # the fake hub also answers /api/version like Ollama
            "--advertise-url", "http://gpu-01.lab.example:11434",
            "--host", "rack3-gpu01",
            "--token-file", str(token_file),
            token="env-token-loses-to-the-file",
        )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert hub.authorizations == ["Bearer sidecar-token-from-file"]
    [report] = hub.reports
    parsed = SidecarReport.model_validate(report)
    assert parsed.host == "rack3-gpu01"
    assert parsed.ollama_url == "http://gpu-01.lab.example:11434"
    assert parsed.hostname == socket.gethostname()


def test_once_exits_1_when_nothing_listens_at_the_hub_url():
    port = free_port()

    result = run_sidecar(
        "--hub", f"http://127.0.0.1:{port}", "--once", "--ollama-url", f"http://127.0.0.1:{port}",
        token="t",
    )  # fmt: skip

    assert result.returncode == 1
    assert "hub unreachable" in result.stderr


def test_the_running_sidecar_stops_cleanly_on_sigterm():
    with FakeHub(report_status=200) as hub:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentcom_sidecar", "--hub", hub.url, "--interval", "0.2",
             "--ollama-url", hub.url],
            cwd=REPO_ROOT,
            env=sidecar_env("t"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert hub.wait_for_reports(2), process.poll()
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert len(hub.reports) >= 2
    assert process.returncode == 0, stderr
    assert "received SIGTERM, stopping" in stderr
    assert "Traceback" not in stderr
