"""The sidecar agent: resources, NVML, advertised URL, backoff, and how it reads the hub's answers.

No Django here (nor in test_cli.py, test_retry_after.py): run them alone with
`pytest -p no:django --confcutdir tests/sidecar tests/sidecar/test_agent.py` (--confcutdir keeps
tests/conftest.py, which needs Django, from loading).
"""

from __future__ import annotations

import logging
import socket
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from agentcom_sidecar import agent
from agentcom_sidecar.report import SidecarReport
from tests.sidecar.fakes import TWO_GPUS, FakeNVMLError, GiB, fake_nvml, free_port


def parse_args(*extra: str) -> Any:
    args = agent.build_parser().parse_args(["--hub", "http://hub.example:8000", *extra])
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
    resources = agent.collect_resources(nvml=None)

    assert resources["vram_used_bytes"] is None
    assert resources["vram_total_bytes"] is None
    assert resources["gpus"] == []
    assert 0 < resources["ram_used_bytes"] <= resources["ram_total_bytes"]
    assert 0 <= resources["cpu_percent"] <= 100


def test_nvml_is_absent_when_the_module_cannot_be_imported():
    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    assert agent.init_nvml(importer=missing) is None


def test_nvml_is_absent_when_the_driver_does_not_answer_nvml_init(monkeypatch):
    monkeypatch.setattr(agent, "_import_nvml", lambda: fake_nvml([], init_error=True))

    assert agent.init_nvml() is None


def test_the_module_level_loader_can_be_replaced_by_a_fake_module(monkeypatch):
    module = fake_nvml(TWO_GPUS)
    monkeypatch.setattr(agent, "_import_nvml", lambda: module)

    assert agent.init_nvml() is module


def test_two_gpus_are_reported_one_by_one_and_summed():
    resources = agent.collect_resources(nvml=fake_nvml(TWO_GPUS))

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

    resources = agent.collect_resources(nvml=nvml)

    assert resources["vram_used_bytes"] is None
    assert resources["gpus"] == []


def test_a_report_with_two_gpus_validates_against_the_shared_schema():
    report = agent.build_report(
        agent.collect_resources(nvml=fake_nvml(TWO_GPUS)),
        hostname="gpu-01",
        ollama_url="http://gpu-01.lab.example:11434",
    )

    parsed = SidecarReport.model_validate(report)
    assert parsed.host == "gpu-01.lab.example"
    assert parsed.ollama_host_port() == ("gpu-01.lab.example", 11434)
    assert [gpu.index for gpu in parsed.gpus] == [0, 1]
    assert "host" not in report  # only sent when --host is given


def test_a_report_carries_host_only_when_it_is_given():
    report = agent.build_report(agent.collect_resources(None), hostname="gpu-01", host="rack3-gpu01")

    assert report["host"] == "rack3-gpu01"
    assert "ollama_url" not in report


# --- advertised Ollama URL ---------------------------------------------------------------------


def test_the_advertised_url_is_the_fqdn_with_the_local_port():
    url = agent.advertised_ollama_url("http://127.0.0.1:11500", None, "gpu-01.lab.example")

    assert url == "http://gpu-01.lab.example:11500"


def test_the_advertised_url_defaults_to_port_11434():
    url = agent.advertised_ollama_url("http://127.0.0.1", None, "gpu-01.lab.example")

    assert url == "http://gpu-01.lab.example:11434"


def test_the_advertise_url_flag_wins_over_the_fqdn():
    args = parse_args("--advertise-url", "http://10.0.0.7:11434/")

    url = agent.advertised_ollama_url(args.ollama_url, args.advertise_url, "gpu-01")

    assert url == "http://10.0.0.7:11434"


@pytest.mark.parametrize("fqdn", ["localhost", "localhost.localdomain", "127.0.0.1", "127.0.1.1", "::1", "0.0.0.0"])
def test_a_localhost_fqdn_is_never_advertised(fqdn):
    assert agent.advertised_ollama_url("http://127.0.0.1:11434", None, fqdn) is None


@pytest.mark.parametrize("value", ["http://127.0.0.1:11434", "localhost:11434", "http://[::1]/"])
def test_the_advertise_url_flag_refuses_loopback_addresses_for_a_remote_hub(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        agent.main(["--hub", "http://hub.example.com:8000", "--advertise-url", value])

    assert exit_info.value.code == 2
    assert "names this machine only" in capsys.readouterr().err


def test_the_reporter_warns_once_and_omits_ollama_when_the_fqdn_is_localhost(monkeypatch, caplog):
    monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    monkeypatch.setattr(agent, "detect_ollama", lambda client, url: "0.5.1")
    reporter = agent.Reporter(parse_args(), "secret-token", nvml=None)
    caplog.set_level(logging.INFO, logger="agentcom_sidecar")

    try:
        urls = [reporter.ollama_url() for _ in range(3)]
    finally:
        reporter.close()

    assert urls == [None, None, None]
    warnings = [r for r in caplog.records if "--advertise-url" in r.getMessage()]
    assert len(warnings) == 1


def test_the_reporter_advertises_the_fqdn_when_ollama_answers(monkeypatch):
    monkeypatch.setattr(socket, "getfqdn", lambda: "gpu-01.lab.example")
    monkeypatch.setattr(agent, "detect_ollama", lambda client, url: "0.5.1")
    reporter = agent.Reporter(parse_args(), "secret-token", nvml=None)

    try:
        report = reporter.make_report()
    finally:
        reporter.close()

    assert report["ollama_url"] == "http://gpu-01.lab.example:11434"


def test_ollama_is_omitted_when_it_does_not_answer(monkeypatch):
    monkeypatch.setattr(socket, "getfqdn", lambda: "gpu-01.lab.example")
    reporter = agent.Reporter(parse_args("--ollama-url", f"http://127.0.0.1:{free_port()}"), "t", None)

    try:
        report = reporter.make_report()
    finally:
        reporter.close()

    assert "ollama_url" not in report


# --- backoff -----------------------------------------------------------------------------------


def test_backoff_doubles_from_one_second_and_is_capped_at_sixty():
    backoff = agent.Backoff(rng=lambda low, high: high)

    delays = [backoff.next_delay() for _ in range(12)]

    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]


def test_backoff_is_jittered_between_zero_and_its_ceiling():
    backoff = agent.Backoff()
    for _ in range(10):
        backoff.next_delay()

    delays = [backoff.next_delay() for _ in range(200)]

    assert all(0 <= delay <= 60 for delay in delays)
    assert len(set(delays)) > 150  # full jitter: not the same delay over and over
    assert min(delays) < 30 < max(delays)


def test_backoff_never_overflows_during_a_very_long_outage():
    backoff = agent.Backoff(rng=lambda low, high: high)
    backoff.attempt = 10_000

    assert backoff.next_delay() == 60


def test_backoff_starts_again_from_one_second_after_a_reset():
    backoff = agent.Backoff(rng=lambda low, high: high)
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
        result = agent.send_report(client, "http://hub", "t", {"hostname": "h"})

    assert result.outcome == outcome


def test_a_rejected_report_carries_the_hubs_detail():
    answer = httpx.Response(400, json={"error": "invalid", "detail": "hostname is required"})

    with hub_client(answer) as client:
        result = agent.send_report(client, "http://hub", "t", {})

    assert result.detail == "HTTP 400: hostname is required"


def test_the_reporter_logs_one_line_per_hub_state_change_not_per_failure(caplog):
    reporter = agent.Reporter(parse_args(), "secret-token", nvml=None)
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
    caplog.set_level(logging.INFO, logger="agentcom_sidecar")

    try:
        outcomes = [reporter.send({"hostname": "h"}).outcome for _ in range(8)]
    finally:
        reporter.close()

    assert outcomes == ["ok", "down", "down", "down", "ok", "ok", "rejected", "rejected"]
    messages = [record.getMessage() for record in caplog.records]
    assert sum("hub unreachable" in m for m in messages) == 1
    assert sum("hub accepts reports again" in m for m in messages) == 1
    assert sum("bad gpus" in m for m in messages) == 1


def test_the_loop_backs_off_while_the_hub_is_down_and_stops_on_a_revoked_token():
    results = iter(
        [
            agent.SendResult("down", "refused"),
            agent.SendResult("down", "refused"),
            agent.SendResult("ok"),
            agent.SendResult("auth", "HTTP 401"),
        ]
    )
    reporter = SimpleNamespace(make_report=lambda: {}, send=lambda report: next(results))
    sleeps: list[float] = []

    code = agent._loop(reporter, parse_args("--interval", "10"), sleep=sleeps.append)

    assert code == agent.EXIT_AUTH
    assert len(sleeps) == 3
    assert 0 <= sleeps[0] <= 1 and 0 <= sleeps[1] <= 2  # backoff, jittered
    assert 9 < sleeps[2] <= 10  # back to the normal interval


def test_max_backoff_caps_every_wait_while_the_hub_is_down():
    results = iter([agent.SendResult("down", "refused")] * 8 + [agent.SendResult("auth", "HTTP 401")])
    reporter = SimpleNamespace(make_report=lambda: {}, send=lambda report: next(results))
    sleeps: list[float] = []

    agent._loop(reporter, parse_args("--max-backoff", "0.5"), sleep=sleeps.append)

    assert len(sleeps) == 8
    assert all(0 <= delay <= 0.5 for delay in sleeps)


def test_the_hub_url_is_required_except_for_a_dry_run(capsys):
    with pytest.raises(SystemExit) as exit_info:
        agent.main(["--once"])

    assert exit_info.value.code == 2
    assert "--hub is required" in capsys.readouterr().err
