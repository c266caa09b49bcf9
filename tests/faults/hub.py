"""`make run` as a user starts it (the launcher and its Supervisor), in its own run folder, port and namespace."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from django.conf import settings

from agentcom_site.processes import free_port
from tests.live import wait_until

BASE_DIR = Path(__file__).resolve().parent.parent.parent
# The test run's own isolation: a launched hub must derive its own namespace like a real one.
NOT_INHERITED = (
    *("AGENTCOM_CHANNEL_PREFIX", "AGENTCOM_CELERY_QUEUE", "AGENTCOM_NAMESPACE", "DATABASE_URL"),
    *("PROBE_ON_REGISTER", "PROBE_TIMEOUT_SECONDS", "RESOURCE_HISTORY_SECONDS"),  # tests.settings' own
)


class LaunchedHub:
    """`python -m agentcom_site.launcher run` in a subprocess; its log in `folder/launcher.log`."""

    def __init__(self, folder: Path, **extra_env: str):
        self.folder = folder
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        self.env = dict(
            env,
            DJANGO_SETTINGS_MODULE="agentcom_site.settings",
            AGENTCOM_RUN_DIR=str(folder),
            REDIS_URL=settings.REDIS_URL,
            PORT=str(self.port),
            DJANGO_SUPERUSER_PASSWORD="fault-suite-123",
            REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
            PYTHONUNBUFFERED="1",
            **extra_env,
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> LaunchedHub:
        log = open(self.folder / "launcher.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentcom_site.launcher", "run"],
            env=self.env,
            cwd=BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: cleaned up below even if it hangs
        )
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)  # as Ctrl-C: the launcher stops its children
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if "namespace" in self.log():  # leave nothing of this hub on the shared Redis
            client = redis.Redis.from_url(settings.REDIS_URL)
            for key in client.scan_iter(f"{self.namespace}*"):
                client.delete(key)
            client.close()

    def log(self) -> str:
        return (self.folder / "launcher.log").read_text(errors="replace")

    def pid_of(self, name: str) -> int | None:
        """The pid the launcher last started `name` with (from its log)."""
        found = re.findall(rf"(?:started|restarted) {name} \(pid (\d+)\)", self.log())
        return int(found[-1]) if found else None

    @property
    def namespace(self) -> str:
        return re.search(r"namespace (\S+)", self.log()).group(1)

    def request(self, method: str, path: str, body=None, token: str = "") -> tuple[int, dict | list | None]:
        """(status, JSON) of a request; (0, None) while nothing listens."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            reply = conn.getresponse()
            data = reply.read()
            return reply.status, (json.loads(data) if data.startswith((b"{", b"[")) else None)
        except OSError:
            return 0, None
        finally:
            conn.close()

    def ready(self) -> bool:
        return self.request("GET", "/readyz")[0] == 200

    def wait_ready(self, timeout: float = 60) -> None:
        if not wait_until(self.ready, timeout=timeout, interval=0.2):
            raise AssertionError(f"the hub never became ready: {self.request('GET', '/readyz')}\n{self.log()}")

    def admin_token(self) -> str:
        out = subprocess.run(
            [sys.executable, "manage.py", "create_token", "--scope", "admin", "--label", "faults"],
            env=self.env,
            cwd=BASE_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.strip().splitlines()[-1]

    def register(self, token: str, port: int) -> int:
        status, row = self.request("POST", "/api/v1/endpoints", {"host": "127.0.0.1", "port": port}, token)
        assert status == 201, (status, row)
        return row["id"]

    def status_of(self, token: str, endpoint_id: int) -> str:
        return (self.request("GET", f"/api/v1/endpoints/{endpoint_id}", token=token)[1] or {}).get("status", "")


def seconds_until(check, timeout: float) -> float | None:
    """How long `check` took to hold (None if it never did within `timeout`)."""
    started = time.monotonic()
    if wait_until(check, timeout=timeout, interval=0.05):
        return time.monotonic() - started
    return None
