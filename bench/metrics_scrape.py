"""GET /metrics at fleet size: 1,000 endpoints x 10 models and 1,000 reporting hosts, through a real daphne.

The fleet is made through registry.services as the probe sweep and the sidecars would
(bench/page_scale.py's seed: 3% unhealthy, 2% unknown, 1-4 GPUs per host, 2% of hosts silent),
and the Redis counters hold a realistic mix (probe durations, failures, reports, sockets). A
scraper with a metrics token asks one daphne for /metrics on a fixed schedule (open loop, one
request every --interval seconds; latency counted from the scheduled time). Before every scrape
each reporting host gets new numbers, as sidecars reporting every 10 s would between two
scrapes; one run keeps the endpoints unchanged, in another one endpoint goes down or up before
each scrape.
Also measured: the same exposition built in this process (no HTTP), and what counting costs on
the hot paths.

    .venv/bin/python bench/metrics_scrape.py [--endpoints 1000] [--scrapes 40] [--interval 1.0]

Writes bench/results/metrics_scrape.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.hubstack import Hub, percentile, setup_django  # noqa: E402
from bench.page_scale import seed  # noqa: E402

TARGET_MS = 100


def seed_counters() -> None:
    """Counters as a day of a 1,000-endpoint fleet would leave them (every bucket and reason used)."""
    from registry import metrics
    from registry.ollama import FAILURE_REASONS, ProbeResult

    rng = random.Random(3)
    results = [
        ProbeResult(i, i % 20 != 0, "" if i % 20 else "HTTP 500", rng.randint(2, 6000), "", (), None)
        for i in range(20_000)
    ]
    metrics.probes_done(results)
    for reason in FAILURE_REASONS:
        metrics.tally.add(metrics.labelled(metrics.PROBE_FAILURES, reason), 7)
    metrics.tally.observe(metrics.SWEEP_DURATION, [rng.uniform(4, 8) for _ in range(500)])
    metrics.reports_accepted(8_640_000)
    for code in metrics.REFUSAL_REASONS:
        metrics.report_refused(code)
    metrics.events_published(86_400)
    metrics.tally.socket_change(25)
    metrics.tally.flush()


def hot_path_cost() -> dict:
    """Microseconds per counted report, and per probe result counted in a chunk of 250."""
    from registry import metrics
    from registry.ollama import ProbeResult

    n = 200_000
    t = time.perf_counter()
    for _ in range(n):
        metrics.reports_accepted()
    per_report = (time.perf_counter() - t) / n * 1e6
    chunk = [ProbeResult(i, i % 10 != 0, "" if i % 10 else "connection refused", 12, "", (), None) for i in range(250)]
    rounds = 400
    t = time.perf_counter()
    for _ in range(rounds):
        metrics.probes_done(chunk)
    per_probe = (time.perf_counter() - t) / (rounds * len(chunk)) * 1e6
    with metrics.tally.lock:  # not real traffic: do not send it
        metrics.tally.counts.clear()
        metrics.tally.sums.clear()
    return {"us_per_report": round(per_report, 2), "us_per_probe_result": round(per_probe, 2)}


def render_in_process(rounds: int = 20) -> dict:
    from django.db import connection

    from registry import scrape

    scrape.render()
    result = {}
    for kind in ("cold", "unchanged"):  # nothing kept from a previous scrape, or endpoints unchanged
        times, cpu = [], []
        for _ in range(rounds):
            hosts_report()
            if kind == "cold":
                scrape.forget_cache()
            t, c = time.perf_counter(), time.process_time()
            body = scrape.render()
            times.append((time.perf_counter() - t) * 1000)
            cpu.append((time.process_time() - c) * 1000)
        result[kind] = {"p50_ms": round(statistics.median(times), 1), "cpu_p50_ms": round(statistics.median(cpu), 1)}
    connection.close()
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return {**result, "bytes": len(body), "samples": samples}


def hosts_report() -> None:
    """Every host that reports gets new numbers, as 1,000 sidecars every 10 s do between scrapes."""
    from datetime import timedelta

    from django.db.models import F
    from django.utils import timezone

    from registry.models import Host

    now = timezone.now()
    Host.objects.filter(last_report_at__gte=now - timedelta(minutes=10)).update(
        cpu_percent=F("cpu_percent") * 0.9 + 3,
        ram_used_bytes=F("ram_used_bytes") + 4096,
        vram_used_bytes=F("vram_used_bytes") + 4096,
        last_report_at=now,
    )


def scrape_daphne(hub: Hub, token: str, scrapes: int, interval: float, *, change: bool) -> dict:
    """Scrape on schedule, the hosts reporting in between; with `change`, an endpoint also goes
    down or up before every scrape, so the endpoints are read again each time."""
    import httpx
    import psutil
    from django.db.models import F

    from registry.models import Endpoint

    first = Endpoint.objects.order_by("id").values_list("id", flat=True).first()

    daphne = psutil.Process(hub.pids()["daphne"][0])
    times, statuses, size = [], {}, 0
    with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        client.get("/metrics")  # warm: connection open, token cached
        cpu_before = sum(daphne.cpu_times()[:2])
        start = time.perf_counter()
        for k in range(scrapes):
            scheduled = start + k * interval
            hosts_report()
            if change:  # one endpoint flaps: down at one scrape, up at the next
                status = "unhealthy" if k % 2 == 0 else "healthy"
                Endpoint.objects.filter(id=first).update(status=status, revision=F("revision") + 1)
            time.sleep(max(0.0, scheduled - time.perf_counter()))
            reply = client.get("/metrics")
            times.append((time.perf_counter() - scheduled) * 1000)
            statuses[reply.status_code] = statuses.get(reply.status_code, 0) + 1
            size = len(reply.content)
        cpu_ms = (sum(daphne.cpu_times()[:2]) - cpu_before) / scrapes * 1000
    return {
        "scrapes": scrapes,
        "daphne_cpu_ms_per_scrape": round(cpu_ms, 1),
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "max_ms": round(max(times), 1),
        "statuses": statuses,
        "bytes": size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=40)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes (open loop)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL (default: SQLite in a temp folder)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="metrics-scrape-"))
    # Hosts stay "reporting" for the whole run (their resources are in every scrape); the 2%
    # seeded as silent an hour ago stay stale.
    env = setup_django(
        folder, args.database_url, probe_interval=3600, STALE_AFTER_SECONDS="1800", PROBE_ON_REGISTER="false"
    )
    from registry import services

    t = time.perf_counter()
    seed(0, args.endpoints)
    print(
        f"seeded {args.endpoints} endpoints x 10 models and {args.endpoints} hosts in {time.perf_counter() - t:.0f} s"
    )
    seed_counters()
    token = services.create_token("metrics", "bench")[1]
    cost = hot_path_cost()
    local = render_in_process()
    hub = Hub(folder, env, components=("daphne",)).start()
    try:
        remote = scrape_daphne(hub, token, args.scrapes, args.interval, change=False)
        changing = scrape_daphne(hub, token, args.scrapes, args.interval, change=True)
    finally:
        hub.stop()
    load = os.getloadavg()[0]
    rows = [
        ("GET /metrics through daphne, endpoints unchanged", f"p50 {remote['p50_ms']} ms, p95 {remote['p95_ms']} ms, "
         f"max {remote['max_ms']} ms; daphne CPU {remote['daphne_cpu_ms_per_scrape']} ms", f"p95 < {TARGET_MS} ms"),
        ("GET /metrics through daphne, an endpoint down or up before each", f"p50 {changing['p50_ms']} ms, p95 "
         f"{changing['p95_ms']} ms, max {changing['max_ms']} ms; daphne CPU {changing['daphne_cpu_ms_per_scrape']} ms",
         f"p95 < {TARGET_MS} ms"),
        ("exposition", f"{local['samples']:,} samples, {local['bytes'] / 1024:.0f} KiB", ""),
        ("render in process, endpoints unchanged", f"p50 {local['unchanged']['p50_ms']} ms "
         f"({local['unchanged']['cpu_p50_ms']} ms CPU)", ""),
        ("render in process, cold (nothing kept)", f"p50 {local['cold']['p50_ms']} ms "
         f"({local['cold']['cpu_p50_ms']} ms CPU)", ""),
        ("counting one report (hot path)", f"{cost['us_per_report']} µs", "no Redis round trip"),
        ("counting one probe result (chunk of 250)", f"{cost['us_per_probe_result']} µs", ""),
        ("answers", ", ".join(f"{n} x {s}" for s, n in sorted((Counter(remote["statuses"]) + Counter(changing["statuses"])).items())),
         "all 200"),
    ]  # fmt: skip
    print(f"\n{args.endpoints:,} endpoints x 10 models, {args.endpoints:,} hosts; box load (1 min) {load:.1f}\n")
    print("| measure | result | target |\n| --- | ---: | ---: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    out = BASE_DIR / "bench" / "results" / "metrics_scrape.json"
    database = "postgresql" if args.database_url else "sqlite"
    result = {"endpoints": args.endpoints, "database": database, "load_1min": round(load, 2), "daphne": remote, "daphne_endpoints_changing": changing,
              "in_process": local, "hot_path": cost}  # fmt: skip
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
