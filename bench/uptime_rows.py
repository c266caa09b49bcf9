"""What uptime costs the rows: a snapshot of N endpoints with a week of status events.

Endpoints are registered through registry.services; their week of history is written as
status events directly (2% never answered, --flapping percent (3) flapping every ~20 minutes all week, the rest with
one outage of up to 3 hours).
Measured, each the median of several runs: the snapshot (registry.services.build_snapshot)
with the uptime cache cold (every uptime computed: one query over the week's status events)
and warm (the cached figures, as between two changes); the uptime computation alone, cold;
one changed row (endpoint_rows([id]) after its status changed: its uptime recomputed).

    .venv/bin/python bench/uptime_rows.py [--endpoints 5000] [--database-url postgres://...]

Writes bench/results/uptime_rows-flapping<N>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.hubstack import setup_django  # noqa: E402


def seed(n: int, flapping: int = 3) -> int:
    """Register n endpoints and write their week of status events; return the events written."""
    from django.utils import timezone

    from registry import services
    from registry.models import Endpoint, Event

    ids = []
    for start in range(0, n, 1000):
        entries = [
            (f"127.{20 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}", 11434, "")
            for i in range(start, min(n, start + 1000))
        ]
        ids += services.register_endpoints(entries)
    now = timezone.now()
    week = now - timedelta(days=7)
    Endpoint.objects.update(registered_at=now - timedelta(days=30), status="healthy")
    rng = random.Random(7)
    events, unknown = [], []
    for i, endpoint_id in enumerate(ids):
        kind = i % 100
        if kind < 2:
            unknown.append(endpoint_id)
            continue
        transitions = []
        if kind < 2 + flapping:  # flapping: every ~20 minutes all week
            at, status = week, "healthy"
            while at < now:
                new = "unhealthy" if status == "healthy" else "healthy"
                transitions.append((at, status, new))
                at, status = at + timedelta(minutes=rng.uniform(10, 30)), new
        else:  # one outage of up to 3 hours
            down = week + timedelta(hours=rng.uniform(0, 160))
            transitions = [
                (down, "healthy", "unhealthy"),
                (down + timedelta(hours=rng.uniform(0, 3)), "unhealthy", "healthy"),
            ]
        events += [
            Event(at=at, kind="status", endpoint_id=endpoint_id, detail={"from": a, "to": b, "reason": ""})
            for at, a, b in transitions
        ]
        if transitions and transitions[-1][2] == "unhealthy":
            Endpoint.objects.filter(id=endpoint_id).update(status="unhealthy")
    Endpoint.objects.filter(id__in=unknown).update(status="unknown")
    Event.objects.bulk_create(events, batch_size=2000)
    return len(events)


def timed(fn, runs: int = 5) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(1000 * (time.perf_counter() - started))
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=5000)
    parser.add_argument("--flapping", type=int, default=3, help="percent of endpoints flapping all week")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uptime-bench-") as folder:
        setup_django(Path(folder), args.database_url, 15.0)
        from django.utils import timezone

        from registry import services
        from registry.models import Endpoint
        from registry.rows import forget_cached_models
        from registry.uptime import forget_cached_uptimes, uptimes

        events = seed(args.endpoints, args.flapping)
        services.build_snapshot()  # warm the model lists: only uptime differs between the runs

        def cold():
            forget_cached_uptimes()
            services.build_snapshot()

        def uptimes_alone():
            forget_cached_uptimes()
            triples = list(Endpoint.objects.values_list("id", "status", "registered_at"))
            uptimes(triples, timezone.now(), complete=True)

        one = Endpoint.objects.order_by("id").values_list("id", flat=True)[10]

        def changed_row():
            status = Endpoint.objects.get(id=one).status
            Endpoint.objects.filter(id=one).update(status="unhealthy" if status == "healthy" else "healthy")
            services.endpoint_rows([one])

        result = {
            "endpoints": args.endpoints,
            "status_events_7d": events,
            "flapping_percent": args.flapping,
            "database": "postgresql" if args.database_url else "sqlite",
            "snapshot_uptime_cold_ms": round(timed(cold), 1),
            "snapshot_uptime_warm_ms": round(timed(services.build_snapshot), 1),
            "uptimes_alone_cold_ms": round(timed(uptimes_alone), 1),
            "one_changed_row_ms": round(timed(changed_row, 20), 2),
        }
        forget_cached_models()
    print(
        "| endpoints | status events (7 d) | snapshot, uptimes cold | snapshot, uptimes cached | uptimes alone, cold | one changed row |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {result['endpoints']:,} | {result['status_events_7d']:,} | {result['snapshot_uptime_cold_ms']} ms "
        f"| {result['snapshot_uptime_warm_ms']} ms | {result['uptimes_alone_cold_ms']} ms | {result['one_changed_row_ms']} ms |"
    )
    out = BASE_DIR / "bench" / "results" / f"uptime_rows-flapping{args.flapping}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
