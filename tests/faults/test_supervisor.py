"""The launcher's Supervisor restarts a child that dies, backing off while it keeps dying."""

from __future__ import annotations

import re
import signal
import socket
import sys

import pytest

from agentcom_site.launcher import Supervisor
from tests.live import wait_until


@pytest.fixture
def supervisor(monkeypatch):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(Supervisor, "FIRST_DELAY", 0.05)
    monkeypatch.setattr(Supervisor, "MAX_DELAY", 0.2)
    sup = Supervisor()
    yield sup
    sup.stopping = True
    sup.stop_all()
    signal.signal(signal.SIGINT, handlers[0])
    signal.signal(signal.SIGTERM, handlers[1])


def restarts_after(supervisor: Supervisor, count: int) -> bool:
    supervisor.tick()
    return supervisor.restarts >= count


def test_a_child_that_keeps_dying_is_restarted_with_a_doubling_delay_up_to_the_cap(supervisor, capsys):
    supervisor.start([sys.executable, "-c", "raise SystemExit(3)"], {}, "crasher")
    assert wait_until(lambda: restarts_after(supervisor, 4), timeout=20)
    log = capsys.readouterr().out
    assert "crasher (pid" in log and "died (exit code 3)" in log
    assert re.findall(r"restarting it in (\S+) s", log)[:4] == ["0.05", "0.1", "0.2", "0.2"]


def test_a_child_that_stayed_up_long_enough_starts_over_at_the_first_delay(supervisor, capsys, monkeypatch):
    monkeypatch.setattr(Supervisor, "STABLE_AFTER", 0.0)  # every run counts as having stayed up
    supervisor.start([sys.executable, "-c", "raise SystemExit(3)"], {}, "crasher")
    assert wait_until(lambda: restarts_after(supervisor, 3), timeout=20)
    assert set(re.findall(r"restarting it in (\S+) s", capsys.readouterr().out)) == {"0.05"}


def test_ctrl_c_stops_every_child_at_once(supervisor):
    supervisor.start([sys.executable, "-c", "import time; time.sleep(60)"], {}, "sleeper")
    supervisor.start([sys.executable, "-c", "import time; time.sleep(60)"], {}, "other")
    supervisor._stop(signal.SIGINT, None)
    assert supervisor.run() == 0
    assert all(proc.poll() is not None for proc in supervisor.procs)


def test_a_port_in_use_stops_make_run_at_once_with_a_message_instead_of_a_restart_loop(monkeypatch, capsys):
    from agentcom_site import launcher

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setenv("HOST", "127.0.0.1")
        monkeypatch.setenv("PORT", str(busy.getsockname()[1]))
        assert launcher.run() == 1
    assert "is in use (another hub?): set PORT" in capsys.readouterr().out
