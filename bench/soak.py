"""Soak: 1,000 sidecars reporting every 10 s (100 reports/s, open loop) plus 1,000 probed endpoints,
for --minutes (default 10). Every 30 s: reports answered, errors, p99, RSS of every hub process,
history rows. At the end: RSS growth after the first minute, and stored == last acknowledged.
Writes bench/results/soak-<database>.json.

    .venv/bin/python bench/soak.py [--minutes 10] [--hosts 1000] [--database-url ...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import tempfile
import time
from pathlib import Path

from hubstack import BASE_DIR, Hub, make_tokens, percentile, report_body, setup_django, start_fleet
from ingest import Sender, _closing, lost_reports, step, wait_probed

from agentcom_site.tuning import GC_THRESHOLDS  # the hub's own (hubstack put the project on the path)


def rss_mib(hub: Hub) -> dict[str, float]:
    import psutil

    found = {}
    for name, pids in hub.pids().items():
        total = 0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.NoSuchProcess:
                pass
        found[name] = round(total / 2**20, 1)
    return found


def history_rows() -> int:
    from registry.models import ResourceSnapshot

    return ResourceSnapshot.objects.count()


async def soak(args, hub: Hub, tokens: list[str]) -> dict:
    client = Sender(hub.port, tokens, args.transport)
    rng = random.Random(11)
    rate = len(tokens) / args.interval
    outcomes: list[tuple[int, float]] = []
    acked: dict[str, dict] = {}
    samples = []
    await step(client, 200, len(tokens) / 200, tokens, 0, rng)  # every host reports once
    await wait_probed(len(tokens), timeout=120)
    # The generator's own full garbage collections (1,000 sockets) would stall its sends and
    # count as the hub's latency: what is alive now is frozen, young garbage collected rarely.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    async def one(i: int, at: float) -> None:
        body = report_body(i, rng)
        try:
            status = await client.send(i, body)
        except (OSError, asyncio.IncompleteReadError, ConnectionError):
            status = -1
        outcomes.append((status, time.monotonic() - at))
        if status == 200:
            acked[body["host"]] = body

    start = time.monotonic() + 0.1
    end = start + args.minutes * 60
    next_sample, k, tasks, window_start = start + 30, 0, set(), 0
    while True:
        at = start + k / rate
        if at >= end:
            break
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(k % len(tokens), at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        k += 1
        if time.monotonic() >= next_sample:
            window = outcomes[window_start:]
            window_start = len(outcomes)
            lat = [o[1] * 1000 for o in window if o[0] == 200]
            sample = {
                "t_s": round(time.monotonic() - start),
                "ok": sum(1 for o in window if o[0] == 200),
                "errors": sum(1 for o in window if o[0] != 200),
                "p99_ms": round(percentile(lat, 99), 1) if lat else None,
                "rss_mib": rss_mib(hub),
                "history_rows": await asyncio.to_thread(_closing, history_rows),
            }
            samples.append(sample)
            print(json.dumps(sample))
            next_sample += 30
    await asyncio.gather(*tasks)
    await asyncio.sleep(2)
    await client.close()
    samples.append({"t_s": round(time.monotonic() - start), "rss_mib": rss_mib(hub),
                    "history_rows": await asyncio.to_thread(_closing, history_rows)})  # fmt: skip
    lat = [o[1] * 1000 for o in outcomes if o[0] == 200]
    first = next((s for s in samples if s["t_s"] >= 60), samples[0] if samples else None)
    last = samples[-1] if samples else None
    growth = {
        name: round(100 * (last["rss_mib"][name] - first["rss_mib"][name]) / first["rss_mib"][name], 1)
        for name in (last["rss_mib"] if last else {})
        if first["rss_mib"].get(name)
    }
    return {
        "minutes": args.minutes,
        "offered_per_s": rate,
        "sent": len(outcomes),
        "ok": sum(1 for o in outcomes if o[0] == 200),
        "errors": sum(1 for o in outcomes if o[0] != 200),
        "p50_ms": round(percentile(lat, 50), 1) if lat else None,
        "p99_ms": round(percentile(lat, 99), 1) if lat else None,
        "rss_growth_after_first_minute_pct": growth,
        "lost": await asyncio.to_thread(_closing, lost_reports, acked),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10, help="seconds between one sidecar's reports")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--transport", choices=["http", "ws"], default="ws")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    env = setup_django(folder, args.database_url, probe_interval=15)
    tokens = make_tokens(args.hosts)
    from django.db import connection

    database = connection.vendor
    connection.close()
    fleet = start_fleet(args.hosts, folder)
    hub = Hub(folder, env).start()
    try:
        result = asyncio.run(soak(args, hub, tokens))
    finally:
        hub.stop()
        fleet.terminate()
    result.update(database=database, transport=args.transport, hosts=args.hosts, logs=str(folder))
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    out = BASE_DIR / "bench" / "results" / f"soak-{database}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
