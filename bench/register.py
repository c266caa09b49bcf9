"""Registration benchmark: 1,000 endpoints through REST, one per request from 8 parallel clients,
then 1,000 more in one bulk request. Prints endpoints/s and writes bench/results/register.json.

    .venv/bin/python bench/register.py [--count 1000] [--clients 8] [--database-url ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from hubstack import BASE_DIR, Client, Hub, percentile, setup_django


async def one_by_one(port: int, token: str, count: int, clients: int) -> dict:
    addresses = iter(f"127.0.{70 + i // 250}.{i % 250 + 1}" for i in range(count))
    statuses: list[int] = []
    latencies: list[float] = []

    async def client_loop() -> None:
        client = Client(port)
        for address in addresses:
            started = time.monotonic()
            status, _, _ = await client.post("/api/v1/endpoints", json.dumps({"host": address}).encode(), token)
            latencies.append((time.monotonic() - started) * 1000)
            statuses.append(status)
        client.close()

    started = time.monotonic()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    wall = time.monotonic() - started
    return {
        "mode": f"one per request, {clients} clients",
        "count": count,
        "created": statuses.count(201),
        "errors": len(statuses) - statuses.count(201),
        "seconds": round(wall, 2),
        "per_second": round(statuses.count(201) / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
    }


async def bulk(port: int, token: str, count: int) -> dict:
    body = [{"host": f"127.0.{90 + i // 250}.{i % 250 + 1}", "name": f"bulk {i}"} for i in range(count)]
    client = Client(port)
    started = time.monotonic()
    status, _, data = await client.post("/api/v1/endpoints", json.dumps(body).encode(), token)
    wall = time.monotonic() - started
    client.close()
    created = len(json.loads(data)) if status == 201 else 0
    return {
        "mode": "one bulk request",
        "count": count,
        "created": created,
        "errors": 0 if status == 201 else 1,
        "seconds": round(wall, 2),
        "per_second": round(created / wall, 1),
        "p50_ms": round(wall * 1000, 1),
        "p99_ms": round(wall * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-register-"))
    env = setup_django(folder, args.database_url, probe_interval=15)
    from django.db import connection

    from registry import services

    token = services.create_token("admin", "bench")[1]
    database = connection.vendor
    connection.close()
    # The worker probes what is registered (all refuse: nothing listens there), as in real use.
    hub = Hub(folder, env).start()
    try:
        rows = [
            asyncio.run(one_by_one(hub.port, token, args.count, args.clients)),
            asyncio.run(bulk(hub.port, token, args.count)),
        ]
    finally:
        hub.stop()
    cols = ["mode", "count", "created", "errors", "seconds", "per_second", "p50_ms", "p99_ms"]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    out = BASE_DIR / "bench" / "results" / f"register-{database}.json"
    out.write_text(json.dumps({"database": database, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
