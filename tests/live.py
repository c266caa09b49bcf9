"""Start the real hub processes (daphne, Celery worker, Celery beat) against the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from django.conf import settings
from django.db import connection

from agentcom_site import processes
from agentcom_site.processes import free_port

BASE_DIR = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """The URL of the database pytest-django created, for the processes we start."""
    db = connection.settings_dict
    if db["ENGINE"].endswith(("sqlite3", "agentcom_site.sqlite")):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class LiveStack:
    """The hub's processes as `make run` starts them; logs kept in `folder` for failure reports.

    Components: "daphne", "worker" and "beat" (on its own, as deployed at scale). Without a
    separate "beat", the worker runs beat inside unless `embedded_beat=False`.
    """

    def __init__(
        self,
        folder: Path,
        *,
        probe_interval: float = 1.0,
        probe_on_register: bool = True,
        components: tuple[str, ...] = ("daphne", "worker"),
        embedded_beat: bool = True,
        **extra_env: str,
    ):
        self.folder = folder
        self.port = free_port()
        self.components = components
        self.embedded_beat = embedded_beat
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="tests.settings",
            DATABASE_URL=test_database_url(),
            REDIS_URL=settings.REDIS_URL,
            PROBE_INTERVAL_SECONDS=str(probe_interval),
            PROBE_ON_REGISTER="true" if probe_on_register else "false",
            AGENTCOM_RUN_DIR=str(folder),
            PYTHONUNBUFFERED="1",
            **extra_env,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def commands(self) -> dict[str, list[str]]:
        queue, schedule = settings.CELERY_TASK_DEFAULT_QUEUE, self.folder / "beat-schedule"
        inside = self.embedded_beat and "beat" not in self.components
        return {
            "daphne": processes.daphne("127.0.0.1", self.port),
            "worker": processes.worker(queue, loglevel="INFO", beat_schedule=schedule if inside else None),
            "beat": processes.beat(schedule, loglevel="INFO"),
        }

    def start(self) -> LiveStack:
        for name in self.components:
            self.start_component(name, wait=False)
        for name in self.components:
            self.wait_ready(name)
        return self

    def start_component(self, name: str, *, wait: bool = True) -> None:
        log = open(self.folder / f"{name}.log", "ab")
        cmd = self.commands()[name]
        self.procs[name] = subprocess.Popen(cmd, env=self.env, cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(name)

    def wait_ready(self, name: str) -> None:
        if name == "daphne":
            self._wait_for(self._port_open, "daphne to listen")
        elif name == "worker":
            self._wait_for(lambda: b"ready." in (self.folder / "worker.log").read_bytes(), "the Celery worker")

    def _port_open(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def _wait_for(self, check, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode != -signal.SIGTERM and proc.returncode != 0:
                    raise RuntimeError(f"{name} exited early:\n{self.log(name)}")
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}:\n" + "\n".join(self.log(n) for n in self.procs))

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def in_thread(fn, *args, **kwargs):
    """Run an ORM call in a fresh thread and close its connection.

    Beside Playwright's sync API (an event loop in greenlets) the ORM would refuse to run, or
    open a connection nobody closes, which keeps PostgreSQL from dropping the test database.
    """

    def run():
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def wait_until(check, timeout: float, interval: float = 0.1):
    """Poll `check` until it returns something truthy; return that, or the last value at timeout."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = check()
    return value
