"""An overloaded hub answers 503 (or 429) with Retry-After: the sidecar waits at least that long, jittered."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import pytest

from agentcom_sidecar import agent
from tests.sidecar.fakes import FakeHub, free_port, overloaded
from tests.sidecar.test_cli import REPO_ROOT, sidecar_env


def reporter_for(hub: FakeHub, *extra: str) -> tuple[agent.Reporter, object]:
    args = agent.build_parser().parse_args(
        ["--hub", hub.url, "--ollama-url", f"http://127.0.0.1:{free_port()}", "--host", "gpu-01", *extra]
    )
    args.token = "t"
    return agent.Reporter(args, args.token, nvml=None), args


@pytest.mark.parametrize("status", [503, 429])
def test_an_overloaded_answer_is_read_as_busy_with_the_wait_the_hub_asked_for(status):
    with FakeHub(answers=[overloaded("7", status)]) as hub:
        reporter, _ = reporter_for(hub)
        try:
            result = reporter.send(reporter.make_report())
        finally:
            reporter.close()

    assert result == agent.SendResult("busy", f"HTTP {status}: too many reports; retry later", 7.0)


def test_a_503_without_retry_after_means_the_hub_is_down():
    # What a reverse proxy answers when the hub process is gone.
    with FakeHub(answers=[(503, {}, {"error": "bad gateway"})]) as hub:
        reporter, _ = reporter_for(hub)
        try:
            result = reporter.send(reporter.make_report())
        finally:
            reporter.close()

    assert (result.outcome, result.retry_after) == ("down", None)


def test_retry_after_may_be_an_http_date():
    now = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)

    assert agent.parse_retry_after("Mon, 02 Mar 2026 12:00:30 GMT", now=now) == 30
    assert agent.parse_retry_after("Mon, 02 Mar 2026 11:59:00 GMT", now=now) == 0


@pytest.mark.parametrize("value", ["", "soon", "-5", "1.5e3", None])
def test_an_unusable_retry_after_is_ignored(value):
    assert agent.parse_retry_after(value) is None


def test_a_retry_after_of_a_day_is_capped():
    assert agent.parse_retry_after("86400") == agent.RETRY_AFTER_MAX_SECONDS


def test_the_loop_waits_at_least_retry_after_and_logs_the_overload_once(caplog):
    answers = [overloaded("7")] * 3 + [(200, {}, {"ok": True}), (401, {}, {"detail": "revoked"})]
    caplog.set_level(logging.INFO, logger="agentcom_sidecar")
    sleeps: list[float] = []
    with FakeHub(answers=answers) as hub:
        reporter, args = reporter_for(hub, "--interval", "10")
        try:
            code = agent._loop(reporter, args, sleep=sleeps.append)
        finally:
            reporter.close()

    assert code == agent.EXIT_AUTH
    assert len(hub.reports) == 5
    # Three waits of 7 s plus jitter (window: the larger of the backoff ceiling 1, 2, 4 s and half the wait).
    assert all(7 <= delay <= 7 + 4 for delay in sleeps[:3]), sleeps
    assert sleeps[3] <= 10
    messages = [record.getMessage() for record in caplog.records]
    assert sum("hub overloaded" in m for m in messages) == 1, messages
    assert "retrying after at least 7 s" in next(m for m in messages if "hub overloaded" in m)
    assert sum("hub accepts reports again" in m for m in messages) == 1


def test_a_fleet_told_to_come_back_in_10_s_returns_spread_out_not_in_step():
    delays = [agent.Backoff().next_delay(retry_after=10) for _ in range(1000)]

    assert min(delays) >= 10 and max(delays) <= 15
    per_second = Counter(int(delay) for delay in delays)
    # Without jitter all 1,000 would land in one second; spread over 5 s, about 200 each.
    assert set(per_second) == {10, 11, 12, 13, 14}
    assert max(per_second.values()) < 300


def test_the_running_sidecar_does_not_come_back_before_retry_after():
    with FakeHub(answers=[overloaded("1")]) as hub:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentcom_sidecar", "--hub", hub.url, "--interval", "0.2",
             "--ollama-url", f"http://127.0.0.1:{free_port()}"],
            cwd=REPO_ROOT,
            env=sidecar_env("t"),
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

    assert hub.received_at[1] - hub.received_at[0] >= 1.0
    assert stderr.count("hub overloaded") == 1, stderr
    assert process.returncode == 0, stderr
