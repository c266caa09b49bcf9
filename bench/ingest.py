"""Ingest benchmark: sidecar reports from 1,000 simulated hosts, open loop, in rising steps,
while the real Celery worker probes a fake fleet of 1,000 endpoints every 15 s.

For each step (default 50, 100, 200, 400, 800 reports/s for 20 s): reports answered 2xx per
second, 503s, other errors, latency p50/p99 counted from the SCHEDULED send time, the oldest
"last checked" of any endpoint (a lost sweep shows as > 2 intervals), CPU of daphne and of the
worker, and change-to-screen: time from a report's scheduled send to the frame that shows its
value on an open dashboard. After the load, every host's stored values are compared with its
last acknowledged report. Writes bench/results/ingest-<database>.json.

    .venv/bin/python bench/ingest.py [--rates 50,100,200,400,800] [--seconds 20]
                                     [--database-url postgres://postgres@127.0.0.1:5432/bench]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import threading
import time
from pathlib import Path

from hubstack import (
    BASE_DIR,
    Client,
    Hub,
    SocketClient,
    generator_gc_paused,
    make_tokens,
    percentile,
    report_body,
    session_cookie,
    setup_django,
    start_fleet,
)

REPORT_PATH = "/api/v1/sidecar/report"


class SweepWatch(threading.Thread):
    """Every 2 s, the age of the oldest `last_checked_at` among the endpoints."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float | None]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        from django.db import connection
        from django.db.models import Min
        from django.utils import timezone

        from registry.models import Endpoint

        while not self.stopping.wait(2.0):
            oldest = Endpoint.objects.aggregate(m=Min("last_checked_at"))["m"]
            age = (timezone.now() - oldest).total_seconds() if oldest else None
            self.samples.append((time.monotonic(), age))
        connection.close()

    def worst(self, since: float, until: float) -> float | None:
        ages = [a for t, a in self.samples if since <= t <= until and a is not None]
        return max(ages) if ages else None


class Screen:
    """A logged-in dashboard socket: when did each (host, cpu) value first appear?"""

    def __init__(self, url: str, cookie: str) -> None:
        self.url, self.cookie = url, cookie
        self.seen: dict[tuple[str, float], float] = {}
        self.frames = 0
        self.largest = 0

    async def run(self, ready: asyncio.Event) -> None:
        import aiohttp

        ws_url = self.url.replace("http://", "ws://") + "/ws/dashboard/"
        async with aiohttp.ClientSession(cookies={"sessionid": self.cookie}) as session:
            async with session.ws_connect(ws_url, headers={"Origin": self.url}, max_msg_size=0) as ws:
                async for message in ws:
                    self.frames += 1
                    self.largest = max(self.largest, len(message.data))
                    frame = json.loads(message.data)
                    if frame["type"] == "snapshot":
                        ready.set()
                    now = time.monotonic()
                    for host, row in (frame.get("resources") or {}).items():
                        if row:
                            self.seen.setdefault((host, row["cpu_percent"]), now)


class Sender:
    """Send one report of host i: over REST (a pool of keep-alive connections) or over each
    host's own report socket, as a sidecar with `--transport ws` does."""

    def __init__(self, port: int, tokens: list[str], transport: str) -> None:
        self.port, self.tokens, self.transport = port, tokens, transport
        self.client = Client(port)
        self.sockets: dict[int, SocketClient] = {}
        self.connect_failures: dict[str, int] = {}

    async def send(self, i: int, body: dict) -> int:
        if self.transport == "http":
            status, _, _ = await self.client.post(REPORT_PATH, json.dumps(body).encode(), self.tokens[i])
            return status
        if i not in self.sockets:
            self.sockets[i] = await self._connect(i)
        return (await self.sockets[i].report(body))["status"]

    async def _connect(self, i: int) -> SocketClient:
        """Open host i's socket, retrying a refused handshake after a second as the sidecar does."""
        for attempt in range(5):
            try:
                return await SocketClient(self.port, self.tokens[i]).connect()
            except Exception as exc:  # websockets' handshake errors; counted and printed at the end
                self.connect_failures[type(exc).__name__] = self.connect_failures.get(type(exc).__name__, 0) + 1
                if attempt == 4:
                    raise ConnectionError(f"host {i}: no socket after 5 tries") from exc
                await asyncio.sleep(1.0)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        self.client.close()
        await asyncio.gather(*(s.close() for s in self.sockets.values()), return_exceptions=True)


async def step(client: Sender, rate: float, seconds: float, tokens: list[str], offset: int, rng) -> dict:
    """Send `rate` reports/s for `seconds`, on schedule; return raw outcomes."""
    n = int(rate * seconds)
    hosts = len(tokens)
    outcomes: list[tuple[int, float, float, dict | None]] = []  # status, scheduled, latency, body
    lags: list[float] = []  # the generator's own delay: scheduled time -> its send starts
    errors: dict[str, int] = {}
    start = time.monotonic() + 0.05
    tasks = []

    async def one(k: int, at: float) -> None:
        i = (offset + k) % hosts
        body = report_body(i, rng)
        lags.append(time.monotonic() - at)
        try:
            status = await client.send(i, body)
        except (OSError, asyncio.IncompleteReadError, ConnectionError) as exc:
            status = -1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
        outcomes.append((status, at, time.monotonic() - at, body if 200 <= status < 300 else None))

    for k in range(n):
        at = start + k / rate
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(k, at)))
    await asyncio.gather(*tasks)
    if errors:
        print(f"client errors: {errors}")
    return {"outcomes": outcomes, "lags": lags, "start": start, "end": time.monotonic()}


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def summarise(rate, seconds, raw, watch, screen, cpu_before, cpu_after, wall) -> dict:
    outcomes = raw["outcomes"]
    ok = [o for o in outcomes if 200 <= o[0] < 300]
    busy = [o for o in outcomes if o[0] == 503]
    errors = [o for o in outcomes if not (200 <= o[0] < 300) and o[0] != 503]
    lat = [o[2] * 1000 for o in ok]
    lags = [x * 1000 for x in raw["lags"]]
    # Where the slow answers fall (second of the step -> how many over 100 ms): a stall that
    # repeats every PROBE_INTERVAL_SECONDS points at the sweep, a spread tail at CPU contention.
    slow: dict[int, int] = {}
    for _, at, latency, _ in ok:
        if latency > 0.1:
            slow[int(at - raw["start"])] = slow.get(int(at - raw["start"]), 0) + 1
    shown = []
    for _, at, _, body in ok:
        seen = screen.seen.get((body["host"], body["cpu_percent"]))
        if seen is not None:
            shown.append((seen - at) * 1000)
    return {
        "offered_per_s": rate,
        "sent": len(outcomes),
        "ok": len(ok),
        "ok_per_s": round(len(ok) / seconds, 1),
        "overloaded_503": len(busy),
        "errors": len(errors),
        "error_statuses": sorted({o[0] for o in errors}),
        "p50_ms": round(percentile(lat, 50), 1) if lat else None,
        "p99_ms": round(percentile(lat, 99), 1) if lat else None,
        "p999_ms": round(percentile(lat, 99.9), 1) if lat else None,
        "max_ms": round(max(lat), 1) if lat else None,
        "oldest_check_s": round(watch.worst(raw["start"], raw["end"]) or 0, 1),
        "daphne_cpu_pct": round(100 * (cpu_after["daphne"] - cpu_before["daphne"]) / wall, 1),
        "worker_cpu_pct": round(100 * (cpu_after["worker"] - cpu_before["worker"]) / wall, 1),
        "generator_lag_p99_ms": round(percentile(lags, 99), 1) if lags else None,
        "generator_cpu_pct": round(100 * raw["generator_cpu"] / wall, 1),
        "slow_by_second": dict(sorted(slow.items())),
        "screen_matched": len(shown),
        "screen_p50_ms": round(percentile(shown, 50), 1) if shown else None,
        "screen_p99_ms": round(percentile(shown, 99), 1) if shown else None,
    }


def lost_reports(acked: dict[str, dict]) -> int:
    """Hosts whose stored latest values differ from their last acknowledged report."""
    from registry.models import Host

    rows = {h["name"]: h for h in Host.objects.filter(name__in=list(acked)).values()}
    lost = 0
    for name, body in acked.items():
        row = rows.get(name)
        keys = ("cpu_percent", "ram_used_bytes", "vram_used_bytes", "gpus")
        if row is None or any(row[k] != body[k] for k in keys):
            lost += 1
    return lost


async def main_async(args, hub: Hub, tokens: list[str], cookie: str, watch: SweepWatch) -> dict:
    client = Sender(hub.port, tokens, args.transport)
    rng = random.Random(7)
    screen = Screen(hub.url, cookie)
    ready = asyncio.Event()
    screen_task = asyncio.create_task(screen.run(ready))
    await asyncio.wait_for(ready.wait(), 30)

    # Warm-up: every host reports once (registers its Ollama), then the first sweep probes them.
    warm = await step(client, 200, len(tokens) / 200, tokens, 0, rng)
    print(f"warm-up: {sum(1 for o in warm['outcomes'] if o[0] == 200)} of {len(tokens)} reports accepted")
    await wait_probed(len(tokens), timeout=90)

    steps, acked, offset = [], {}, 0
    for rate in args.rates:
        pids = hub.pids()
        before = {name: cpu_seconds(pids[name]) for name in ("daphne", "worker")}
        t0 = time.monotonic()
        own = time.process_time()
        with generator_gc_paused():  # its outcome lists grow by thousands of tuples a second
            raw = await step(client, rate, args.seconds, tokens, offset, rng)
        raw["generator_cpu"] = time.process_time() - own
        await asyncio.sleep(1.5)  # let the last frames reach the screen
        wall = time.monotonic() - t0
        after = {name: cpu_seconds(pids[name]) for name in ("daphne", "worker")}
        offset += len(raw["outcomes"])
        for _status, _at, _, body in sorted(raw["outcomes"], key=lambda o: o[1]):
            if body is not None:
                acked[body["host"]] = body
        row = summarise(rate, args.seconds, raw, watch, screen, before, after, wall)
        steps.append(row)
        print(json.dumps(row))
    await asyncio.sleep(2)
    lost = await asyncio.to_thread(_closing, lost_reports, acked)
    screen_task.cancel()
    await client.close()
    if client.connect_failures:
        print(f"report sockets refused at the handshake and opened again: {client.connect_failures}")
    return {
        "steps": steps,
        "acknowledged_hosts": len(acked),
        "lost": lost,
        "largest_frame_bytes": screen.largest,
        "socket_handshakes_retried": client.connect_failures,
    }


def _closing(fn, *args):
    from django.db import connection

    try:
        return fn(*args)
    finally:
        connection.close()


async def wait_probed(n: int, timeout: float) -> None:
    def probed() -> int:
        from registry.models import Endpoint

        return Endpoint.objects.filter(last_checked_at__isnull=False).count()

    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        count = await asyncio.to_thread(_closing, probed)
        if count >= n:
            print(f"all {n} endpoints probed")
            return
        await asyncio.sleep(1)
    print(f"warning: only {count} of {n} endpoints probed after {timeout} s")


def print_table(result: dict) -> None:
    cols = ["offered_per_s", "ok_per_s", "overloaded_503", "errors", "p50_ms", "p99_ms", "p999_ms", "oldest_check_s",
            "daphne_cpu_pct", "worker_cpu_pct", "generator_cpu_pct", "generator_lag_p99_ms", "screen_p50_ms",
            "screen_p99_ms"]  # fmt: skip
    print(" | ".join(cols))
    for row in result["steps"]:
        print(" | ".join(str(row[c]) for c in cols))
    print(f"hosts acknowledged: {result['acknowledged_hosts']}, stored values differing: {result['lost']}")


def _loop_factory():
    """uvloop when installed (the hub's own requirement): the generator's lag counts as latency."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--rates", type=lambda s: [float(x) for x in s.split(",")], default=[50, 100, 200, 400, 500, 600, 800]
    )
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--probe-interval", type=float, default=15)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--transport", choices=["http", "ws"], default="http")
    parser.add_argument(
        "--untuned", action="store_true", help="daphne with CPython's GC and GIL defaults (INTERPRETER_TUNING=false)"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    env = setup_django(folder, args.database_url, args.probe_interval, INTERPRETER_TUNING=str(not args.untuned).lower())
    tokens = make_tokens(args.hosts)
    cookie = session_cookie()
    from django.db import connection

    database = connection.vendor
    connection.close()
    fleet = start_fleet(args.hosts, folder)
    hub = Hub(folder, env).start()
    watch = SweepWatch()
    watch.start()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            result = runner.run(main_async(args, hub, tokens, cookie, watch))
    finally:
        watch.stopping.set()
        hub.stop()
        fleet.terminate()
    result.update(
        database=database,
        transport=args.transport,
        hosts=args.hosts,
        seconds_per_step=args.seconds,
        interpreter_tuning=not args.untuned,
        logs=str(folder),
    )
    print_table(result)
    suffix = "-untuned" if args.untuned else ""
    out = BASE_DIR / "bench" / "results" / f"ingest-{database}-{args.transport}{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
