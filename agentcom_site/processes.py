"""The hub's processes as command lines, written once: the launcher, the live tests and bench start these.

Imports no Django, so the launcher can use it before the database exists.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

CELERY = [sys.executable, "-m", "celery", "-A", "agentcom_site"]
# A probe sweep is one asyncio loop per chunk task, waiting on sockets: threads run chunks side by
# side in one process (a prefork child per slot held ~90 MiB each for the same work). Four slots
# let a 1,000-endpoint fleet (four chunks of PROBE_CHUNK_SIZE=250) be probed in one round.
WORKER_CONCURRENCY = 4


# Probing waits out timeouts and can lag a little; answering sidecars and dashboards cannot. On
# a shared box the worker yields the CPU to the web process during a sweep.
WORKER_NICENESS = 5


def _nice(niceness: int) -> list[str]:
    """A command prefix lowering the CPU priority (Linux and macOS; nothing elsewhere)."""
    nice = shutil.which("nice")
    return [nice, "-n", str(niceness)] if nice and niceness else []


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def daphne(host: str, port: int | str, *, access_log: Path | str | None = None) -> list[str]:
    """The web and WebSocket server."""
    cmd = [sys.executable, "-m", "daphne", "-b", host, "-p", str(port)]
    if access_log is not None:
        cmd += ["--access-log", str(access_log)]
    return [*cmd, "agentcom_site.asgi:application"]


def worker(
    queue: str,
    *,
    loglevel: str = "WARNING",
    concurrency: int | str = WORKER_CONCURRENCY,
    beat_schedule: Path | str | None = None,
) -> list[str]:
    """A Celery worker on `queue`; with `beat_schedule`, beat runs inside it as a thread.

    Embedded beat is the one-machine default; with several workers, run one `beat()` instead.
    """
    cmd = [
        *_nice(WORKER_NICENESS),
        *CELERY,
        "worker",
        "--loglevel",
        loglevel,
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "-Q",
        queue,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if beat_schedule is not None:
        cmd += ["--beat-thread", "--schedule-filename", str(beat_schedule)]
    return cmd


def beat(schedule: Path | str, *, loglevel: str = "WARNING") -> list[str]:
    """Celery beat on its own: exactly one per deployment, when workers run without `beat_schedule`."""
    return [*CELERY, "beat", "--loglevel", loglevel, "--schedule", str(schedule)]
