"""The sidecar agent: resources, NVML, advertised URL, backoff, and the real CLI end to end.

No Django here: run alone with `pytest -p no:django tests/registry/test_sidecar_unit.py`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from registry import sidecar
from registry.schemas import SidecarReport

REPO_ROOT = Path(__file__).resolve().parents[2]
GiB = 1024**3


# --- fakes -------------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


def fake_nvml(gpus: list[dict[str, Any]], init_error: bool = False) -> SimpleNamespace:
    """Return a module-like object that answers the NVML calls the sidecar makes."""

    def init() -> None:
        if init_error:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def utilization(handle: int) -> SimpleNamespace:
        if gpus[handle]["util"] is None:
            raise FakeNVMLError("Not Supported")
        return SimpleNamespace(gpu=gpus[handle]["util"], memory=0)

    return SimpleNamespace(
        NVMLError=FakeNVMLError,
        nvmlInit=init,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=lambda handle: gpus[handle]["name"],
        nvmlDeviceGetMemoryInfo=lambda handle: SimpleNamespace(
            used=gpus[handle]["used"], total=gpus[handle]["total"], free=0
        ),
        nvmlDeviceGetUtilizationRates=utilization,
    )


TWO_GPUS = [
    # Older nvidia-ml-py returns bytes for the name, newer returns str.
    {"name": b"NVIDIA GeForce RTX 4090", "used": 6 * GiB, "total": 24 * GiB, "util": 37},
    {"name": "NVIDIA A100-SXM4-80GB", "used": 10 * GiB, "total": 80 * GiB, "util": None},
]


def parse_args(*extra: str) -> Any:
    args = sidecar.build_parser().parse_args(["--hub", "http://hub.example:8000", *extra])
    args.token = "secret-token"
    return args


def hub_client(*answers: Any) -> httpx.Client:
    """Return a client whose hub answers each request with the next of `answers`."""
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.Client(transport=httpx.MockTransport(handler))


# --- resources and NVML ------------------------------------------------------------------------


def test_resources_report_vram_as_unknown_when_there_is_no_nvml():
    resources = sidecar.collect_resources(nvml=None)

    assert resources["vram_used_bytes"] is None
    assert resources["vram_total_bytes"] is None
    assert resources["gpus"] == []
    assert 0 < resources["ram_used_bytes"] <= resources["ram_total_bytes"]
    assert 0 <= resources["cpu_percent"] <= 100


def test_nvml_is_absent_when_the_module_cannot_be_imported():
    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    assert sidecar.init_nvml(importer=missing) is None


def test_nvml_is_absent_when_the_driver_does_not_answer_nvml_init(monkeypatch):
    monkeypatch.setattr(sidecar, "_import_nvml", lambda: fake_nvml([], init_error=True))

    assert sidecar.init_nvml() is None


def test_the_module_level_loader_can_be_replaced_by_a_fake_module(monkeypatch):
    module = fake_nvml(TWO_GPUS)
    monkeypatch.setattr(sidecar, "_import_nvml", lambda: module)

    assert sidecar.init_nvml() is module


def test_two_gpus_are_reported_one_by_one_and_summed():
    resources = sidecar.collect_resources(nvml=fake_nvml(TWO_GPUS))

    assert resources["vram_used_bytes"] == 16 * GiB
    assert resources["vram_total_bytes"] == 104 * GiB
    assert resources["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA GeForce RTX 4090",
            "memory_used_bytes": 6 * GiB,
            "memory_total_bytes": 24 * GiB,
            "utilization_percent": 37.0,
        },
        {
            "index": 1,
            "name": "NVIDIA A100-SXM4-80GB",
            "memory_used_bytes": 10 * GiB,
            "memory_total_bytes": 80 * GiB,
            "utilization_percent": None,
        },
    ]


def test_a_failing_nvml_read_reports_vram_as_unknown_instead_of_crashing():
    nvml = fake_nvml(TWO_GPUS)

    def lost() -> int:
        raise FakeNVMLError("GPU is lost")

    nvml.nvmlDeviceGetCount = lost

    resources = sidecar.collect_resources(nvml=nvml)

    assert resources["vram_used_bytes"] is None
    assert resources["gpus"] == []


def test_a_report_with_two_gpus_validates_against_the_shared_schema():
    report = sidecar.build_report(
        sidecar.collect_resources(nvml=fake_nvml(TWO_GPUS)),
        hostname="gpu-01",
        ollama_url="http://gpu-01.lab.example:11434",
    )

    parsed = SidecarReport.model_validate(report)
    assert parsed.host == "gpu-01.lab.example"
    assert parsed.ollama_host_port() == ("gpu-01.lab.example", 11434)
    assert [gpu.index for gpu in parsed.gpus] == [0, 1]
    assert "host" not in report  # only sent when --host is given


def test_a_report_carries_host_only_when_it_is_given():
    report = sidecar.build_report(sidecar.collect_resources(None), hostname="gpu-01", host="rack3-gpu01")

    assert report["host"] == "rack3-gpu01"
    assert "ollama_url" not in report


# --- advertised Ollama URL ---------------------------------------------------------------------


def test_the_advertised_url_is_the_fqdn_with_the_local_port():
    url = sidecar.advertised_ollama_url("http://127.0.0.1:11500", None, "gpu-01.lab.example")

    assert url == "http://gpu-01.lab.example:11500"


def test_the_advertised_url_defaults_to_port_11434():
    url = sidecar.advertised_ollama_url("http://127.0.0.1", None, "gpu-01.lab.example")

    assert url == "http://gpu-01.lab.example:11434"


def test_the_advertise_url_flag_wins_over_the_fqdn():
    args = parse_args("--advertise-url", "http://10.0.0.7:11434/")

    url = sidecar.advertised_ollama_url(args.ollama_url, args.advertise_url, "gpu-01")

    assert url == "http://10.0.0.7:11434"


@pytest.mark.parametrize("fqdn", ["localhost", "localhost.localdomain", "127.0.0.1", "127.0.1.1", "::1", "0.0.0.0"])
def test_a_localhost_fqdn_is_never_advertised(fqdn):
    assert sidecar.advertised_ollama_url("http://127.0.0.1:11434", None, fqdn) is None


@pytest.mark.parametrize("value", ["http://127.0.0.1:11434", "localhost:11434", "http://[::1]/"])
def test_the_advertise_url_flag_refuses_loopback_addresses_for_a_remote_hub(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sidecar.main(["--hub", "http://hub.example.com:8000", "--advertise-url", value])

    assert exit_info.value.code == 2
    assert "names this machine only" in capsys.readouterr().err


def test_the_reporter_warns_once_and_omits_ollama_when_the_fqdn_is_localhost(monkeypatch, caplog):
    monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    monkeypatch.setattr(sidecar, "detect_ollama", lambda client, url: "0.5.1")
    reporter = sidecar.Reporter(parse_args(), "secret-token", nvml=None)
    caplog.set_level(logging.INFO, logger="registry.sidecar")

    try:
        urls = [reporter.ollama_url() for _ in range(3)]
    finally:
        reporter.close()

    assert urls == [None, None, None]
    warnings = [r for r in caplog.records if "--advertise-url" in r.getMessage()]
    assert len(warnings) == 1


def test_the_reporter_advertises_the_fqdn_when_ollama_answers(monkeypatch):
    monkeypatch.setattr(socket, "getfqdn", lambda: "gpu-01.lab.example")
    monkeypatch.setattr(sidecar, "detect_ollama", lambda client, url: "0.5.1")
    reporter = sidecar.Reporter(parse_args(), "secret-token", nvml=None)

    try:
        report = reporter.make_report()
    finally:
        reporter.close()

    assert report["ollama_url"] == "http://gpu-01.lab.example:11434"


def test_ollama_is_omitted_when_it_does_not_answer(monkeypatch):
    monkeypatch.setattr(socket, "getfqdn", lambda: "gpu-01.lab.example")
    reporter = sidecar.Reporter(parse_args("--ollama-url", f"http://127.0.0.1:{free_port()}"), "t", None)

    try:
        report = reporter.make_report()
    finally:
        reporter.close()

    assert "ollama_url" not in report


# --- backoff -----------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_and_is_capped_at_sixty():
    backoff = sidecar.Backoff(rng=lambda low, high: high)

    delays = [backoff.next_delay() for _ in range(12)]

    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]


def test_backoff_is_jittered_between_zero_and_its_ceiling():
    backoff = sidecar.Backoff()
    for _ in range(10):
        backoff.next_delay()

    delays = [backoff.next_delay() for _ in range(200)]

    assert all(0 <= delay <= 60 for delay in delays)
    assert len(set(delays)) > 150  # full jitter: not the same delay over and over
    assert min(delays) < 30 < max(delays)


def test_backoff_never_overflows_during_a_very_long_outage():
    backoff = sidecar.Backoff(rng=lambda low, high: high)
    backoff.attempt = 10_000

    assert backoff.next_delay() == 60


def test_backoff_starts_again_from_one_second_after_a_reset():
    backoff = sidecar.Backoff(rng=lambda low, high: high)
    for _ in range(5):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() == 1


# --- talking to the hub ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (httpx.Response(200, json={"ok": True}), "ok"),
        (httpx.Response(401, json={"error": "unauthorized", "detail": "bad token"}), "auth"),
        (httpx.Response(403, json={"error": "forbidden", "detail": "revoked"}), "auth"),
        (httpx.Response(503, text="upstream down"), "down"),
        (httpx.ConnectError("Connection refused"), "down"),
        (httpx.ReadTimeout("timed out"), "down"),
        (httpx.Response(422, json={"error": "invalid", "detail": "cpu_percent: too big"}), "rejected"),
    ],
)
def test_send_report_classifies_the_hubs_answer(answer, outcome):
    with hub_client(answer) as client:
        result = sidecar.send_report(client, "http://hub", "t", {"hostname": "h"})

    assert result.outcome == outcome


def test_a_rejected_report_carries_the_hubs_detail():
    answer = httpx.Response(400, json={"error": "invalid", "detail": "hostname is required"})

    with hub_client(answer) as client:
        result = sidecar.send_report(client, "http://hub", "t", {})

    assert result.detail == "HTTP 400: hostname is required"


def test_the_reporter_logs_one_line_per_hub_state_change_not_per_failure(caplog):
    reporter = sidecar.Reporter(parse_args(), "secret-token", nvml=None)
    reporter.hub_client.close()
    reporter.hub_client = hub_client(
        httpx.Response(200),
        httpx.ConnectError("Connection refused"),
        httpx.Response(503),
        httpx.ConnectError("Connection refused"),
        httpx.Response(200),
        httpx.Response(200),
        httpx.Response(422, json={"detail": "bad gpus"}),
        httpx.Response(422, json={"detail": "bad gpus"}),
    )
    caplog.set_level(logging.INFO, logger="registry.sidecar")

    try:
        outcomes = [reporter.send({"hostname": "h"}).outcome for _ in range(8)]
    finally:
        reporter.close()

    assert outcomes == ["ok", "down", "down", "down", "ok", "ok", "rejected", "rejected"]
    messages = [record.getMessage() for record in caplog.records]
    assert sum("hub unreachable" in m for m in messages) == 1
    assert sum("hub reachable again" in m for m in messages) == 1
    assert sum("bad gpus" in m for m in messages) == 1


def test_the_loop_backs_off_while_the_hub_is_down_and_stops_on_a_revoked_token():
    results = iter(
        [
            sidecar.SendResult("down", "refused"),
            sidecar.SendResult("down", "refused"),
            sidecar.SendResult("ok"),
            sidecar.SendResult("auth", "HTTP 401"),
        ]
    )
    reporter = SimpleNamespace(make_report=lambda: {}, send=lambda report: next(results))
    sleeps: list[float] = []

    code = sidecar._loop(reporter, parse_args("--interval", "10"), sleep=sleeps.append)

    assert code == sidecar.EXIT_AUTH
    assert len(sleeps) == 3
    assert 0 <= sleeps[0] <= 1 and 0 <= sleeps[1] <= 2  # backoff, jittered
    assert 9 < sleeps[2] <= 10  # back to the normal interval


# --- the real command line, as a subprocess ----------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sidecar_env(token: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.pop("AGENTCOM_TOKEN", None)
    if token is not None:
        env["AGENTCOM_TOKEN"] = token
    return env


def run_sidecar(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "registry.sidecar", *args],
        cwd=REPO_ROOT,
        env=sidecar_env(token),
        capture_output=True,
        text=True,
        timeout=60,
    )


class FakeHub:
    """A real HTTP server that plays the hub and a local Ollama, recording what it receives."""

    def __init__(self, report_status: int = 200) -> None:
        self.report_status = report_status
        self.reports: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/api/version":
                    self._reply(200, {"version": "0.5.1"})
                else:
                    self._reply(404, {"error": "not_found", "detail": "no such page"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/api/v1/sidecar/report":
                    self._reply(404, {"error": "not_found", "detail": "no such page"})
                    return
                hub.authorizations.append(self.headers.get("Authorization"))
                if hub.report_status == 401:
                    self._reply(401, {"error": "unauthorized", "detail": "invalid token"})
                    return
                hub.reports.append(json.loads(body))
                self._reply(hub.report_status, {"ok": True})

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_dry_run_prints_a_valid_report_as_json_and_needs_no_token():
    result = run_sidecar("--hub", "http://127.0.0.1:9", "--dry-run", "--ollama-url", f"http://127.0.0.1:{free_port()}")

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
            [sys.executable, "-m", "registry.sidecar", "--hub", hub.url, "--interval", "0.2",
             "--ollama-url", hub.url],
            cwd=REPO_ROOT,
            env=sidecar_env("t"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while len(hub.reports) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
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
