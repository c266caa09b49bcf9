"""Fan-out benchmark: N WebSocket dashboards on one daphne, R registry changes per second.

Prints p50/p95/p99 latency from commit to frame arrival, frames per client per second, hub
CPU, and whether every client's final view equals the database. Writes bench/results/fanout.json.

    .venv/bin/python bench/fanout.py [--clients 100] [--rate 100] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from agentcom_site import processes  # noqa: E402
from agentcom_site.processes import free_port  # noqa: E402


def setup_django(folder: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="agentcom_site.settings",
        DATABASE_URL=f"sqlite:///{folder / 'bench.sqlite3'}",
        AGENTCOM_RUN_DIR=str(folder),
        AGENTCOM_CHANNEL_PREFIX=f"bench-{os.getpid()}",
        PROBE_ON_REGISTER="false",
        REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        LOG_LEVEL="WARNING",
    )
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def session_cookie() -> str:
    from django.contrib.auth.models import User
    from django.test import Client

    user = User.objects.create_user("bench", password="bench-password-1")
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def start_daphne(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        processes.daphne("127.0.0.1", port, access_log=os.devnull),
        cwd=BASE_DIR,
        env=dict(os.environ),
        stdout=open(folder / "daphne.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(200):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise SystemExit("daphne did not start")


class Client:
    """One dashboard: keeps the latest name per endpoint id, records latencies of stamped names."""

    def __init__(self) -> None:
        self.view: dict[int, str] = {}
        self.latencies: list[float] = []
        self.frames = 0

    def apply(self, frame: dict) -> None:
        now = time.time()
        if frame["type"] == "snapshot":
            self.view = {row["id"]: row["name"] for row in frame["endpoints"]}
            return
        if frame["type"] != "llm_registry_update":
            return
        self.frames += 1
        for row in frame["endpoints"]:
            self.view[row["id"]] = row["name"]
            if row["name"].startswith("t"):
                self.latencies.append(now - float(row["name"][1:]))
        for endpoint_id in frame["removed"]:
            self.view.pop(endpoint_id, None)


async def run_client(session, url: str, cookie: str, client: Client, stop: asyncio.Event, ready) -> None:
    # The hub's own origin, port included (the socket refuses any other).
    origin = "http://" + url.split("://", 1)[1].split("/", 1)[0]
    headers = {"Cookie": f"sessionid={cookie}", "Origin": origin}
    async with session.ws_connect(url, headers=headers, max_msg_size=0) as ws:
        ready()
        while not stop.is_set():
            try:
                message = await asyncio.wait_for(ws.receive(), timeout=0.5)
            except TimeoutError:
                continue
            if message.type != 1:  # aiohttp.WSMsgType.TEXT
                break
            client.apply(json.loads(message.data))


def run_changer(folder: Path, rate: float, seconds: float) -> int:
    """Make the changes in a separate process, as a Celery worker or another daphne would."""
    proc = subprocess.run(
        [sys.executable, __file__, "--changer", str(folder), "--rate", str(rate), "--seconds", str(seconds)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
    )
    if proc.stderr.strip():
        print(proc.stderr[-3000:], file=sys.stderr)
    count, elapsed = proc.stdout.strip().splitlines()[-1].split()
    return int(count), float(elapsed)


def make_changes(ids: list[int], rate: float, seconds: float) -> int:
    """Rename endpoints round-robin, each name stamped with its commit time."""
    from registry import services

    count, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        target = start + count / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        services.update_endpoint(ids[count % len(ids)], name=f"t{time.time():.6f}")
        count += 1
    return count


async def measure(args, url: str, cookie: str, folder: Path, daphne_pid: int) -> dict:
    import aiohttp
    import psutil

    clients = [Client() for _ in range(args.clients)]
    stop = asyncio.Event()
    connected = 0

    def ready() -> None:
        nonlocal connected
        connected += 1

    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(run_client(session, url, cookie, c, stop, ready)) for c in clients]
        while connected < args.clients:
            failed = [t for t in tasks if t.done()]
            if failed:
                raise SystemExit(f"a client could not connect: {failed[0].exception()!r}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        hub = psutil.Process(daphne_pid)
        cpu_before, wall_before = hub.cpu_times(), time.monotonic()
        changes, changing = await asyncio.to_thread(run_changer, folder, args.rate, args.seconds)
        wall = time.monotonic() - wall_before
        cpu_after = hub.cpu_times()
        await asyncio.sleep(2)  # let the last coalesced frames arrive
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)

    from registry.models import Endpoint

    truth = await asyncio.to_thread(lambda: dict(Endpoint.objects.values_list("id", "name")))
    latencies = sorted(x for c in clients for x in c.latencies)
    q = statistics.quantiles(latencies, n=100)
    hub_cpu = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    return {
        "clients": args.clients,
        "changes_per_second": round(changes / changing, 1),
        "seconds": round(wall, 1),
        "latency_p50_ms": round(q[49] * 1000, 1),
        "latency_p95_ms": round(q[94] * 1000, 1),
        "latency_p99_ms": round(q[98] * 1000, 1),
        "frames_per_client_per_second": round(statistics.mean(c.frames for c in clients) / wall, 2),
        "hub_cpu_percent_of_one_core": round(100 * hub_cpu / wall, 1),
        "clients_with_final_state_equal_to_db": sum(c.view == truth for c in clients),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--endpoints", type=int, default=50)
    parser.add_argument("--out", default=str(BASE_DIR / "bench" / "results" / "fanout.json"))
    parser.add_argument("--changer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.changer:
        import django

        django.setup()
        from registry.models import Endpoint

        ids = list(Endpoint.objects.order_by("id").values_list("id", flat=True))
        start = time.monotonic()
        count = make_changes(ids, args.rate, args.seconds)
        print(count, time.monotonic() - start)
        return

    folder = Path(tempfile.mkdtemp(prefix="fanout-"))
    setup_django(folder)
    from registry import services

    for i in range(args.endpoints):
        services.register_endpoint(f"127.9.{i // 250}.{i % 250 + 1}")
    cookie = session_cookie()
    port = free_port()
    daphne = start_daphne(port, folder)
    try:
        result = asyncio.run(measure(args, f"ws://127.0.0.1:{port}/ws/dashboard/", cookie, folder, daphne.pid))
    finally:
        daphne.terminate()
        daphne.wait(timeout=10)
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  value")
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
