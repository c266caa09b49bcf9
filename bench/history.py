"""History benchmark: the room history takes per host and per endpoint, how fast curves are read,
what the roll-up costs at fleet size, and what latency sampling adds to the probe path.

1. A fresh SQLite database gets HOSTS hosts (two GPUs each) and as many endpoints with full
   history: 24 h of raw rows at RESOURCE_HISTORY_SECONDS=60 and 30 days of 15-minute rollups;
   SQLite's dbstat gives the bytes of each table and its indexes, per host and per endpoint.
2. REST reads through Django's full stack with an admin token: one host over 24 h and 30 days at
   several steps, the page's sparkline request for 50 hosts, one endpoint's latency.
3. Roll-up of one closed quarter hour for 1,000 hosts and 1,000 endpoints.
4. The probe path's quiet sweep (1,000 endpoints, nothing changed) with and without the
   latency sample, interleaved in one run.

    .venv/bin/python bench/history.py [--hosts 50] [--out bench/results/history.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
GiB = 1024**3


def setup_django(folder: Path) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="agentcom_site.settings",
        DATABASE_URL=f"sqlite:///{folder / 'bench.sqlite3'}",
        AGENTCOM_RUN_DIR=str(folder),
        PROBE_ON_REGISTER="false",
        LOG_LEVEL="WARNING",
        REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        RESOURCE_HISTORY_SECONDS="60",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def gpus(minute: int) -> list[dict]:
    return [
        {
            "index": g,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_used_bytes": (20 + (minute + 7 * g) % 50) * GiB,
            "memory_total_bytes": 80 * GiB,
            "utilization_percent": float((minute * 3 + g) % 100),
        }
        for g in range(2)
    ]


def fill(hosts: int, now: datetime) -> tuple[list, list[int]]:
    """HOSTS hosts and endpoints with a full history: 24 h raw, 30 days rolled up."""
    from registry.models import Endpoint, EndpointLatency, Host, ResourceRollup, ResourceSnapshot
    from registry.services.history import BUCKET_SECONDS, _floor

    made = Host.objects.bulk_create([Host(name=f"127.0.50.{i + 1}", gpus=gpus(0)) for i in range(hosts)])
    endpoints = Endpoint.objects.bulk_create(
        [Endpoint(host=h, address=h.name, status=Endpoint.Status.HEALTHY) for h in made]
    )
    minute0 = _floor(now, 60)
    bucket0 = _floor(now, BUCKET_SECONDS)
    for h, e in zip(made, endpoints, strict=True):
        raw = []
        for m in range(1440):
            cards = gpus(m)
            raw.append(
                ResourceSnapshot(
                    host=h,
                    reported_at=minute0 - timedelta(minutes=m) + timedelta(seconds=h.id % 60),
                    cpu_percent=float(m % 100),
                    ram_used_bytes=(100 + m % 50) * GiB,
                    ram_total_bytes=256 * GiB,
                    vram_used_bytes=sum(c["memory_used_bytes"] for c in cards),
                    vram_total_bytes=160 * GiB,
                    gpus=cards,
                )
            )
        ResourceSnapshot.objects.bulk_create(raw, batch_size=1000)
        rolled = [
            ResourceRollup(
                host=h,
                start=bucket0 - timedelta(seconds=BUCKET_SECONDS * (b + 1)),
                samples=15,
                cpu_min=1.5,
                cpu_avg=37.2,
                cpu_max=88.9,
                ram_avg=41.3,
                ram_max=45.9,
                vram_avg=52.4,
                vram_max=61.0,
                gpus=[[0, 48.7, 55.1], [1, 56.2, 61.0]],
            )
            for b in range(30 * 96)
        ]
        ResourceRollup.objects.bulk_create(rolled, batch_size=1000)
        minutes = [
            EndpointLatency(
                endpoint_id=e.id,
                start=minute0 - timedelta(minutes=m),
                span=60,
                probes=4,
                failures=0,
                total_ms=4 * (12 + m % 9),
                min_ms=10,
                max_ms=30 + m % 9,
            )
            for m in range(1440)
        ]
        quarters = [
            EndpointLatency(
                endpoint_id=e.id,
                start=bucket0 - timedelta(seconds=BUCKET_SECONDS * (b + 1)),
                span=BUCKET_SECONDS,
                probes=60,
                failures=0,
                total_ms=60 * 14,
                min_ms=10,
                max_ms=41,
            )
            for b in range(30 * 96)
        ]
        EndpointLatency.objects.bulk_create(minutes + quarters, batch_size=1000)
    return made, [e.id for e in endpoints]


def sizes(hosts: int) -> dict:
    """Bytes per host (resources) and per endpoint (latency), tables and indexes, from dbstat."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM")
        cursor.execute("SELECT name, tbl_name FROM sqlite_master WHERE type IN ('table', 'index')")
        owner = dict(cursor.fetchall())
        cursor.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")
        by_name = dict(cursor.fetchall())
    tables = {}
    for name, size in by_name.items():
        table = owner.get(name, name)
        tables[table] = tables.get(table, 0) + size
    raw = tables.get("registry_resourcesnapshot", 0)
    rolled = tables.get("registry_resourcerollup", 0)
    latency = tables.get("registry_endpointlatency", 0)
    return {
        "raw_24h_bytes_per_host": raw // hosts,
        "rollup_30d_bytes_per_host": rolled // hosts,
        "latency_bytes_per_endpoint": latency // hosts,
        "raw_bytes_per_row": raw // (hosts * 1440),
        "rollup_bytes_per_row": rolled // (hosts * 2880),
        "latency_bytes_per_row": latency // (hosts * (1440 + 2880)),
        "total_bytes_per_host_with_one_endpoint": (raw + rolled + latency) // hosts,
    }


def timed(fn, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return round(statistics.median(samples), 1), round(samples[int(0.95 * (len(samples) - 1))], 1)


def reads(made: list, endpoint_ids: list[int], repeat: int) -> list[dict]:
    from django.test import Client

    from registry import services
    from registry.models import Token

    token = services.create_token(Token.Scope.ADMIN, "bench")[1]
    client = Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {token}")
    host = made[0].name
    names = ",".join(h.name for h in made[:50])
    cases = [
        ("one host, 24 h, step 60", f"/api/v1/hosts/{host}/history?since=-24h&step=60"),
        ("one host, 24 h, step 900", f"/api/v1/hosts/{host}/history?since=-24h&step=900"),
        ("one host, 30 d, step 900", f"/api/v1/hosts/{host}/history?since=-30d&step=900"),
        ("one host, 30 d, step 3600", f"/api/v1/hosts/{host}/history?since=-30d&step=3600"),
        (
            f"sparklines: {min(50, len(made))} hosts, 1 h, step 60",
            f"/api/v1/hosts/history?names={names}&since=-1h&step=60",
        ),
        ("one endpoint's latency, 24 h, step 60", f"/api/v1/endpoints/{endpoint_ids[0]}/history?since=-24h&step=60"),
        ("one endpoint's latency, 30 d, step 900", f"/api/v1/endpoints/{endpoint_ids[0]}/history?since=-30d&step=900"),
    ]
    rows = []
    for label, url in cases:
        reply = client.get(url)
        assert reply.status_code == 200, (url, reply.content[:200])
        body = json.loads(reply.content)
        points = len(body["t"]) if "t" in body else sum(len(s["t"]) for s in body["hosts"].values())
        p50, p95 = timed(lambda url=url: client.get(url), repeat)
        rows.append(
            {
                "request": label,
                "points": points,
                "reply_kib": round(len(reply.content) / 1024, 1),
                "p50_ms": p50,
                "p95_ms": p95,
            }
        )
    return rows


def roll_up_at_fleet_size(now: datetime) -> dict:
    """One closed quarter hour of 1,000 hosts (15 raw rows each) and 1,000 endpoints (15 minutes each)."""
    from registry import services
    from registry.models import EndpointLatency, Host, ResourceRollup, ResourceSnapshot
    from registry.services.history import BUCKET_SECONDS, _floor

    ResourceSnapshot.objects.all().delete()
    ResourceRollup.objects.all().delete()
    EndpointLatency.objects.all().delete()
    hosts = Host.objects.bulk_create([Host(name=f"127.0.60.{i // 250}.{i % 250}") for i in range(1000)])
    bucket = _floor(now, BUCKET_SECONDS) - timedelta(seconds=BUCKET_SECONDS)
    raw = [
        ResourceSnapshot(
            host=h,
            reported_at=bucket + timedelta(minutes=m),
            cpu_percent=float(m),
            ram_used_bytes=GiB,
            ram_total_bytes=4 * GiB,
            vram_used_bytes=40 * GiB,
            vram_total_bytes=160 * GiB,
            gpus=gpus(m),
        )  # fmt: skip
        for h in hosts
        for m in range(15)
    ]
    ResourceSnapshot.objects.bulk_create(raw, batch_size=2000)
    minutes = [
        EndpointLatency(
            endpoint_id=100_000 + i,
            start=bucket + timedelta(minutes=m),
            span=60,
            probes=4,
            failures=0,
            total_ms=60,
            min_ms=12,
            max_ms=18,
        )  # fmt: skip
        for i in range(1000)
        for m in range(15)
    ]
    EndpointLatency.objects.bulk_create(minutes, batch_size=2000)
    start = time.perf_counter()
    written = services.roll_up(now=bucket + timedelta(seconds=BUCKET_SECONDS + 120))
    took = time.perf_counter() - start
    return {"rows_read": len(raw) + len(minutes), "rows_written": written, "seconds": round(took, 3)}


def quiet_path(rounds: int) -> dict:
    """record_probe_results of 1,000 unchanged endpoints, with and without the latency sample."""
    from django.utils import timezone

    from registry import services
    from registry.models import Endpoint, Host
    from registry.ollama import ProbeResult
    from registry.services import probing

    host = Host.objects.create(name="quiet")
    made = Endpoint.objects.bulk_create(
        [
            Endpoint(
                host=host,
                address=f"127.0.70.{i // 250}",
                port=20000 + i,
                status=Endpoint.Status.HEALTHY,
                latency_ms=12,
                version="0.5.7",
            )
            for i in range(1000)
        ]  # fmt: skip
    )

    def sweep() -> None:
        now = timezone.now()
        results = [ProbeResult(e.id, True, "", 12 + e.id % 5, "0.5.7", (), now) for e in made]
        for start in range(0, len(results), 250):  # PROBE_CHUNK_SIZE: one call per chunk task
            services.record_probe_results(results[start : start + 250], now=now)

    real = probing.add_latency_samples
    sweep()
    without, with_sample = [], []
    for _ in range(rounds):
        for bucket, fn in ((without, lambda *a: None), (with_sample, real)):
            probing.add_latency_samples = fn
            start = time.perf_counter()
            sweep()
            bucket.append((time.perf_counter() - start) * 1000)
    probing.add_latency_samples = real
    # The sample write alone, as the quiet path runs it for a chunk of 250 (inside its transaction).
    from django.db import transaction

    results = [ProbeResult(e.id, True, "", 12, "0.5.7", (), timezone.now()) for e in made[:250]]
    alone = []
    for _ in range(50):
        start = time.perf_counter()
        with transaction.atomic():
            real(results, timezone.now())
        alone.append((time.perf_counter() - start) * 1000)
    return {
        "sample_write_ms_per_chunk_of_250_median": round(statistics.median(alone), 2),
        "endpoints": len(made),
        "rounds": rounds,
        "without_sample_ms_median": round(statistics.median(without), 1),
        "with_sample_ms_median": round(statistics.median(with_sample), 1),
        "without_sample_ms_range": [round(min(without), 1), round(max(without), 1)],
        "with_sample_ms_range": [round(min(with_sample), 1), round(max(with_sample), 1)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=str(BASE_DIR / "bench" / "results" / "history.json"))
    args = parser.parse_args()
    setup_django(Path(tempfile.mkdtemp(prefix="history-bench-")))
    from django.utils import timezone

    now = timezone.now()
    t0 = time.monotonic()
    made, endpoint_ids = fill(args.hosts, now)
    print(f"filled {args.hosts} hosts and endpoints in {time.monotonic() - t0:.1f} s")
    size = sizes(args.hosts)
    read_rows = reads(made, endpoint_ids, args.repeat)
    rollup = roll_up_at_fleet_size(datetime.now(UTC))
    quiet = quiet_path(10)
    print("\nSpace (SQLite, tables + indexes):")
    for key, value in size.items():
        print(f"  {key:42} {value:>12,}")
    print(f"\n{'request':44} {'points':>7} {'KiB':>7} {'p50 ms':>8} {'p95 ms':>8}")
    for r in read_rows:
        print(f"{r['request']:44} {r['points']:>7} {r['reply_kib']:>7} {r['p50_ms']:>8} {r['p95_ms']:>8}")
    print(f"\nroll-up of one quarter hour, 1,000 hosts + 1,000 endpoints: {rollup}")
    print(f"quiet probe path, 1,000 endpoints in 4 chunks (ms): {quiet}")
    load = os.getloadavg()[0]
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_1min": round(load, 2),
        "hosts": args.hosts,
        "space": size,
        "reads": read_rows,
        "roll_up": rollup,
        "quiet_probe_path": quiet,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nbox load {load:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
