"""GET /api/v1/route at fleet size: 1,000 endpoints x 10 models, one daphne, an agent token.

The registry is made as bench/page_scale.py makes it (through registry.services: 3% unhealthy,
2% unknown, 1-4 GPUs per host, 2% of hosts silent). While it is measured, the fleet lives: 100
host reports a second are written (1,000 hosts every 10 s) and every 5 s a probe loads or
unloads a model somewhere, so the routing index is read again as often as it would be.

- in process: services.route() for each model (the index warm; and the cost of reading the
  index again: after ROUTE_CACHE_SECONDS with nothing changed, and after a probe changed
  something);
- through daphne: open loop at fixed rates (requests sent on schedule whether or not earlier
  ones were answered; latency from the scheduled time), the models in turn, n=3.

    .venv/bin/python bench/route.py [--endpoints 1000] [--rates 100,300] [--seconds 10]

Writes bench/results/route.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.hubstack import GIB, Client, Hub, generator_gc_paused, percentile, setup_django  # noqa: E402
from bench.page_scale import MODELS, seed  # noqa: E402

NAMES = [name for name, _, _ in MODELS]


def stats(ms: list[float]) -> dict:
    return {
        "count": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def timed(call, rounds: int) -> list[float]:
    out = []
    for i in range(rounds):
        t = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


def in_process(rounds: int) -> dict:
    from django.conf import settings

    from registry import services

    services.route(NAMES[0])
    warm = timed(lambda i: services.route(NAMES[i % len(NAMES)]), rounds)
    settings.ROUTE_CACHE_SECONDS = 0  # every call reads the index again; nothing changed
    reread = timed(lambda i: services.route(NAMES[i % len(NAMES)]), max(20, rounds // 50))
    rebuilt = []
    for i in range(20):  # a probe changed something: the holders are read again too
        toggle_a_model(random.Random(i))
        rebuilt += timed(lambda _, i=i: services.route(NAMES[i % len(NAMES)]), 1)
    settings.ROUTE_CACHE_SECONDS = 1.0
    return {"warm": stats(warm), "reread_unchanged": stats(reread), "reread_after_probe": stats(rebuilt)}


def toggle_a_model(rng: random.Random) -> None:
    """A probe result that loads or unloads one model on one endpoint (a visible change)."""
    from django.utils import timezone

    from registry import services
    from registry.models import EndpointModel
    from registry.ollama import ModelInfo, ProbeResult

    endpoint_id = rng.choice(list(EndpointModel.objects.values_list("endpoint_id", flat=True).distinct()[:200]))
    now = timezone.now()
    rows = EndpointModel.objects.filter(endpoint_id=endpoint_id).values("name", "size", "loaded", "digest")
    flip = rng.randrange(len(rows))
    infos = tuple(
        ModelInfo(
            r["name"],
            r["digest"],
            r["size"],
            "",
            "",
            "",
            None,
            r["loaded"] != (k == flip),
            r["size"] + GIB if r["loaded"] != (k == flip) else None,
            now + timedelta(minutes=5) if r["loaded"] != (k == flip) else None,
        )  # fmt: skip
        for k, r in enumerate(rows)
    )
    services.record_probe_results([ProbeResult(endpoint_id, True, "", 9, "0.5.7", infos, now)], now=now)


class LiveFleet(threading.Thread):
    """100 host reports a second, and a probe that changes something every 5 s, until stopped."""

    def __init__(self, hosts: list[str]) -> None:
        super().__init__(daemon=True)
        self.hosts, self.stopped, self.reports = hosts, threading.Event(), 0

    def run(self) -> None:
        from django.db import connection
        from django.utils import timezone

        from registry import services
        from registry.schemas import SidecarReport

        rng = random.Random(3)
        tick = 0
        while not self.stopped.wait(0.1):
            batch = []
            for h in rng.sample(self.hosts, 10):
                used = int(rng.uniform(1, 20) * GIB)
                gpu = {"index": 0, "name": "RTX 4090", "memory_used_bytes": used, "memory_total_bytes": 24 * GIB}
                batch.append(
                    SidecarReport.model_validate(
                        {
                            "host": h,
                            "hostname": h,
                            "cpu_percent": round(rng.uniform(2, 95), 1),
                            "ram_used_bytes": GIB,
                            "ram_total_bytes": 4 * GIB,
                            "vram_used_bytes": used,
                            "vram_total_bytes": 24 * GIB,
                            "gpus": [gpu],
                        }  # fmt: skip
                    )
                )
            services.record_reports(batch, now=timezone.now())
            self.reports += len(batch)
            tick += 1
            if tick % 50 == 0:
                toggle_a_model(rng)
        connection.close()


async def open_loop(port: int, token: str, rate: float, seconds: float) -> dict:
    client = Client(port)
    latencies, statuses = [], {}
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2

    async def one(i: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at - loop.time()))
        path = f"/api/v1/route?model={NAMES[i % len(NAMES)].removesuffix(':latest')}&n=3"
        try:
            status, _, _ = await client.get(path, token)
        except Exception as exc:  # counted, not raised: the run goes on
            status = type(exc).__name__
        latencies.append((loop.time() - at) * 1000)
        statuses[status] = statuses.get(status, 0) + 1

    total = int(rate * seconds)
    with generator_gc_paused():  # thousands of waiting tasks
        await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
    client.close()
    return {"rate": rate, "statuses": {str(k): v for k, v in statuses.items()}, **stats(latencies)}


def how(r: dict) -> str:
    return f"{r['rate']:.0f} req/s open loop" if r["rate"] else "one request at a time"


async def one_at_a_time(port: int, token: str, count: int) -> dict:
    """Latency of a single request on an idle hub: one client, the next request after the answer."""
    client = Client(port)
    latencies, statuses = [], {}
    for i in range(count):
        t = time.perf_counter()
        status, _, _ = await client.get(f"/api/v1/route?model={NAMES[i % len(NAMES)]}&n=3", token)
        latencies.append((time.perf_counter() - t) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
    client.close()
    return {"rate": 0, "statuses": {str(k): v for k, v in statuses.items()}, **stats(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rates", default="100,300")
    parser.add_argument("--uncached-rates", default="", help="open-loop rates with ROUTE_CACHE_SECONDS=0 too")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument(
        "--untuned", action="store_true", help="daphne with CPython's GC and GIL defaults (INTERPRETER_TUNING=false)"
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="route-bench-"))
    env = setup_django(
        folder,
        None,
        probe_interval=3600,
        PROBE_ON_REGISTER="false",
        INTERPRETER_TUNING=str(not args.untuned).lower(),
    )
    import psutil

    from registry import services
    from registry.models import EndpointModel, Host

    t = time.perf_counter()
    seed(0, args.endpoints)
    pairs = EndpointModel.objects.count()
    print(f"seeded {args.endpoints:,} endpoints, {pairs:,} models held, in {time.perf_counter() - t:.0f} s")
    token = services.create_token("agent", "bench")[1]
    local = in_process(args.rounds)
    live = LiveFleet(list(Host.objects.values_list("name", flat=True)))
    live.start()
    remote = []
    try:
        # As shipped; then with ROUTE_CACHE_SECONDS=0: every request goes through Django and
        # reads the database (the mark, the hosts' report times, what changed).
        for cache_seconds, rates in (("1", args.rates), ("0", args.uncached_rates)):
            hub = Hub(folder, {**env, "ROUTE_CACHE_SECONDS": cache_seconds}, components=("daphne",)).start()
            try:
                asyncio.run(open_loop(hub.port, token, 50, 2))  # warm: connections, the token, the index
                daphne = psutil.Process(hub.procs["daphne"].pid)
                for r in ["0", *filter(None, rates.split(","))]:
                    cpu = sum(daphne.cpu_times()[:2])
                    if r == "0":
                        result = asyncio.run(one_at_a_time(hub.port, token, 1000))
                    else:
                        result = asyncio.run(open_loop(hub.port, token, float(r), args.seconds))
                    cpu_ms = (sum(daphne.cpu_times()[:2]) - cpu) * 1000 / result["count"]
                    remote.append(
                        {
                            "route_cache_seconds": float(cache_seconds),
                            **result,
                            "daphne_cpu_ms_per_request": round(cpu_ms, 3),
                        }
                    )
            finally:
                hub.stop()
    finally:
        live.stopped.set()
        live.join()
    load = os.getloadavg()[0]
    rows = [
        ("in process, index warm", local["warm"]),
        ("in process, read again (nothing changed)", local["reread_unchanged"]),
        ("in process, read again after a probe", local["reread_after_probe"]),
        *(
            (
                f"daphne, {how(r)}, ROUTE_CACHE_SECONDS={r['route_cache_seconds']:g}",
                r,
            )
            for r in remote
        ),
    ]
    print(f"\nGET /api/v1/route, {args.endpoints:,} endpoints x 10 models; 1-min load {load:.1f}")
    head = ("measure", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms", "daphne CPU ms/req")
    table = [head] + [
        (
            name,
            f"{s['count']:,}",
            f"{s['p50_ms']:.2f}",
            f"{s['p95_ms']:.2f}",
            f"{s['p99_ms']:.2f}",
            f"{s['max_ms']:.1f}",
            f"{s['daphne_cpu_ms_per_request']:.2f}" if "daphne_cpu_ms_per_request" in s else "",
        )
        for name, s in rows
    ]
    width = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width, strict=True))))
    for r in remote:
        print(f"  {how(r)}, ROUTE_CACHE_SECONDS={r['route_cache_seconds']:g}: statuses {r['statuses']}")
    print(f"  reports written meanwhile: {live.reports:,}")
    out = BASE_DIR / "bench" / "results" / ("route-untuned.json" if args.untuned else "route.json")
    result = {
        "interpreter_tuning": not args.untuned,
        "endpoints": args.endpoints,
        "models_held": pairs,
        "load_1min": round(load, 2),
        "in_process": local,
        "daphne": remote,
        "reports_during_run": live.reports,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
