"""SQLite writers under contention: one process commits a small transaction every 10 ms (as the
report writer does) while another runs four threads of short probe-batch transactions with
Python work inside them (as the Celery worker does). Prints the first writer's transaction time
with Django's SQLite backend and with agentcom_site.sqlite (writers queued on a lock file), and
writes bench/results/sqlite_writers.json.

    .venv/bin/python bench/sqlite_writers.py [--seconds 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
ENGINES = ("django.db.backends.sqlite3", "agentcom_site.sqlite")


def setup(folder: str, engine: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="agentcom_site.settings",
        DATABASE_URL=f"sqlite:///{folder}/db.sqlite3",
        AGENTCOM_RUN_DIR=folder,
        LOG_LEVEL="WARNING",
        REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
    )
    import django
    from django.conf import settings

    django.setup()
    settings.DATABASES["default"]["ENGINE"] = engine
    from django.db import connections

    connections.close_all()


def prober(folder: str, engine: str, stop) -> None:
    setup(folder, engine)
    from django.db import transaction
    from django.utils import timezone

    from registry.models import Endpoint

    ids = list(Endpoint.objects.values_list("id", flat=True))

    def chunk(part: list[int]) -> None:
        while not stop.is_set():
            for k in range(7):
                with transaction.atomic():
                    Endpoint.objects.filter(id__in=part[k * 36 : (k + 1) * 36]).update(last_checked_at=timezone.now())
                    sum(i * i for i in range(20000))  # Python work while the transaction is open
            time.sleep(0.05)

    threads = [threading.Thread(target=chunk, args=(ids[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def measure(engine: str, seconds: float) -> dict:
    folder = tempfile.mkdtemp(prefix="bench-sqlite-")
    setup(folder, engine)
    from django.core.management import call_command
    from django.db import connections, transaction

    from registry.models import Endpoint, Host

    call_command("migrate", verbosity=0)
    host = Host.objects.create(name="h")
    Endpoint.objects.bulk_create(
        [Endpoint(host=host, address=f"127.0.{i // 250}.{i % 250 + 1}", port=11434) for i in range(1000)]
    )
    connections.close_all()
    stop = mp.Event()
    other = mp.Process(target=prober, args=(folder, engine, stop))
    other.start()
    time.sleep(2)
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        begin = time.perf_counter()
        with transaction.atomic():
            Host.objects.filter(id=host.id).update(cpu_percent=1.0)
        latencies.append((time.perf_counter() - begin) * 1000)
        time.sleep(0.01)
    stop.set()
    other.join()
    latencies.sort()
    return {
        "engine": engine,
        "transactions": len(latencies),
        "p50_ms": round(latencies[len(latencies) // 2], 1),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1),
        "max_ms": round(latencies[-1], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)  # one measurement, in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.seconds)))
        return
    rows = []
    for _ in range(args.rounds):
        for engine in ENGINES:  # a fresh process each: Django is set up once per process
            cmd = [sys.executable, __file__, "--one", engine, "--seconds", str(args.seconds)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]))
    print("engine | transactions | p50_ms | p99_ms | max_ms")
    for row in rows:
        print(" | ".join(str(row[k]) for k in ("engine", "transactions", "p50_ms", "p99_ms", "max_ms")))
    out = BASE_DIR / "bench" / "results" / "sqlite_writers.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
