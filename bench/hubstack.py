"""What the fleet-size benchmarks share: a hub (daphne + worker + beat) with its own database,
queue and channel prefix, a fake Ollama fleet in its own process, and a lean open-loop HTTP client.

Not a benchmark itself; bench/ingest.py and bench/soak.py use it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from agentcom_site import processes  # noqa: E402
from agentcom_site.processes import free_port  # noqa: E402

GIB = 1024**3
FLEET_BASE = "127.0.50."  # fake Ollama endpoints: 127.0.50.1 ... on one port each


@contextmanager
def generator_gc_paused():
    """No garbage collection in the load generator while it sends (its own full collections
    would delay sends and count as the hub's latency); one collection after."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def setup_django(folder: Path, database_url: str | None, probe_interval: float, **settings: str) -> dict:
    """Point this process (and the hub it starts) at a fresh database; return the hub's env.
    `settings` are more environment variables for both (e.g. PROBE_ON_REGISTER="false")."""
    tag = f"bench-{os.getpid()}"
    env = dict(
        DJANGO_SETTINGS_MODULE="agentcom_site.settings",
        DATABASE_URL=database_url or f"sqlite:///{folder / 'bench.sqlite3'}",
        AGENTCOM_RUN_DIR=str(folder),
        AGENTCOM_CHANNEL_PREFIX=tag,
        AGENTCOM_CELERY_QUEUE=tag,
        REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        PROBE_INTERVAL_SECONDS=str(probe_interval),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **settings,
    )
    os.environ.update(env)
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    import django

    django.setup()
    from django.core.management import call_command

    if database_url:  # a shared PostgreSQL database: start from empty tables
        call_command("flush", "--noinput", verbosity=0)
    call_command("migrate", verbosity=0)
    return dict(os.environ)


def session_cookie(username: str = "bench") -> str:
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create_user(username, password="bench-password-1", is_staff=True)
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


class Hub:
    """daphne, Celery worker and beat as subprocesses, logs in `folder`."""

    def __init__(self, folder: Path, env: dict, *, components=("daphne", "worker", "beat")):
        self.folder, self.env, self.components = folder, env, components
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def commands(self) -> dict[str, list[str]]:
        queue, schedule = self.env["AGENTCOM_CELERY_QUEUE"], self.folder / "beat-schedule"
        inside = "beat" not in self.components  # beat inside the worker unless it runs on its own
        return {
            "daphne": processes.daphne("127.0.0.1", self.port, access_log=os.devnull),
            "worker": processes.worker(queue, beat_schedule=schedule if inside else None),
            "beat": processes.beat(schedule),
        }

    def start(self) -> Hub:
        for name in self.components:
            log = open(self.folder / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(
                self.commands()[name], env=self.env, cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise SystemExit(f"daphne did not start; see {self.folder / 'daphne.log'}")

    def pids(self) -> dict[str, list[int]]:
        """Each component's process and its children (Celery's prefork pool)."""
        import psutil

        found = {}
        for name, proc in self.procs.items():
            try:
                parent = psutil.Process(proc.pid)
                found[name] = [parent.pid] + [c.pid for c in parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                found[name] = []
        return found

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def start_fleet(n: int, folder: Path, models: int = 3) -> subprocess.Popen:
    """Serve n healthy fake Ollama endpoints (127.0.50.x and up) from their own process."""
    import httpx

    names = ["llama3:8b", "mistral:7b", "qwen2:7b", "gemma2:9b", "phi3:mini", "codellama:13b",
             "nomic-embed-text:latest", "llava:7b", "deepseek-r1:8b", "mixtral:8x7b"]  # fmt: skip
    specs = [
        {"host": address(i), "port": 11434, "mode": "healthy", "models": names[:models], "loaded": names[:1]}
        for i in range(n)
    ]
    spec_file = folder / "fleet.json"
    spec_file.write_text(json.dumps({"endpoints": specs}))
    control = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.fake_ollama", "--spec", str(spec_file), "--control-port", str(control)],
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "fleet.log", "wb"),
        # The fake stands in for Ollama servers on other machines: it yields the CPU to the hub.
        preexec_fn=lambda: os.nice(19),
    )
    for _ in range(600):
        try:
            if len(httpx.get(f"http://127.0.0.1:{control}/endpoints", timeout=1).json()) == n:
                return proc
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the fake fleet did not come up; see {folder / 'fleet.log'}")


def address(i: int) -> str:
    return f"127.0.{50 + i // 250}.{i % 250 + 1}"


def make_tokens(n: int) -> list[str]:
    from registry import services

    return [services.create_token("sidecar", f"bench-{i:04d}")[1] for i in range(n)]


def report_body(i: int, rng: random.Random, *, with_ollama: bool = True) -> dict:
    """A realistic report of host i: 1-4 GPUs, moving CPU and memory."""
    gpus = []
    for g in range(1 + i % 4):
        total = 24 * GIB if i % 2 else 80 * GIB
        gpus.append(
            {
                "index": g,
                "name": "NVIDIA A100-SXM4-80GB" if total == 80 * GIB else "NVIDIA GeForce RTX 4090",
                "memory_used_bytes": int(total * rng.uniform(0.05, 0.97)),
                "memory_total_bytes": total,
                "utilization_percent": round(rng.uniform(0, 100), 1),
            }
        )
    ram_total = 256 * GIB
    body = {
        "host": f"gpu-{i:04d}",
        "hostname": f"gpu-{i:04d}.fleet.internal",
        "cpu_percent": round(rng.uniform(0, 100), 2),
        "ram_used_bytes": int(ram_total * rng.uniform(0.1, 0.9)),
        "ram_total_bytes": ram_total,
        "vram_used_bytes": sum(g["memory_used_bytes"] for g in gpus),
        "vram_total_bytes": sum(g["memory_total_bytes"] for g in gpus),
        "gpus": gpus,
    }
    if with_ollama:
        body["ollama_url"] = f"http://{address(i)}:11434"
    return body


class Client:
    """A lean HTTP/1.1 client on asyncio streams with a pool of keep-alive connections.

    Open loop: `post` never waits for a free connection; it opens another one.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: bytes, token: str) -> tuple[int, dict, bytes]:
        return await self.request("POST", path, body, token)

    async def get(self, path: str, token: str) -> tuple[int, dict, bytes]:
        return await self.request("GET", path, None, token)

    async def request(self, method: str, path: str, body: bytes | None, token: str) -> tuple[int, dict, bytes]:
        if self.idle:
            try:
                return await self._send(self.idle.pop(), method, path, body, token)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass  # the server closed an idle connection: like any client, retry on a new one
        conn = await asyncio.open_connection("127.0.0.1", self.port)
        return await self._send(conn, method, path, body, token)

    async def _send(self, conn, method: str, path: str, body: bytes | None, token: str) -> tuple[int, dict, bytes]:
        reader, writer = conn
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {token}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            writer.write(head.encode() + b"\r\n" + (body or b""))
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("closed")
            headers = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            data = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append(conn)
        return int(status_line.split()[1]), headers, data

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class SocketClient:
    """One sidecar's report socket (/ws/sidecar/): frames are sent at once, replies matched by seq."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.ws = None
        self.waiting: dict[int, asyncio.Future] = {}
        self.seq = 0

    async def connect(self) -> SocketClient:
        import websockets

        self.ws = await websockets.connect(
            f"ws://127.0.0.1:{self.port}/ws/sidecar/",
            additional_headers={"Authorization": f"Bearer {self.token}"},
            max_size=2**20,
            ping_interval=None,
        )
        self.reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                reply = json.loads(message)
                future = self.waiting.pop(reply.get("seq"), None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except Exception:  # the socket closed: fail whatever still waits
            pass
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("socket closed"))
        self.waiting.clear()

    async def report(self, body: dict) -> dict:
        self.seq += 1
        future = asyncio.get_running_loop().create_future()
        self.waiting[self.seq] = future
        await self.ws.send(json.dumps({"seq": self.seq, "report": body}))
        return await future

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
