"""Probe-sweep benchmark: N endpoints served by the fake Ollama fleet (in its own process),
90% healthy, 5% hanging, 5% answering HTTP 500; one sweep as a Celery chunk task runs it.

With `--schemes http,https` (the default) each size is measured twice: over plain HTTP, then
with every endpoint registered as https:// and served over TLS (one ECDSA P-256 certificate per
endpoint from a throwaway CA that PROBE_CA_BUNDLE names; every probe a full handshake).

Prints a table and writes bench/results/probe_sweep.json:
    .venv/bin/python bench/probe_sweep.py [--sizes 100,1000] [--timeout 5] [--schemes http,https]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
from devtools.tls import TestCA  # noqa: E402

FIRST_ADDRESS = ipaddress.ip_address("127.0.40.1")


def setup_django(folder: Path, timeout: float, ca_bundle: str) -> None:
    os.environ.update(
        PROBE_CA_BUNDLE=ca_bundle,
        DJANGO_SETTINGS_MODULE="agentcom_site.settings",
        DATABASE_URL=f"sqlite:///{folder / 'bench.sqlite3'}",
        AGENTCOM_RUN_DIR=str(folder),
        PROBE_ON_REGISTER="false",
        PROBE_TIMEOUT_SECONDS=str(timeout),
        LOG_LEVEL="WARNING",
        REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
    )
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def mode_for(i: int) -> str:
    return "hang" if i % 20 == 0 else "http500" if i % 20 == 1 else "healthy"


def start_fleet(n: int, folder: Path, ca: TestCA | None) -> tuple[subprocess.Popen, list[tuple[str, str]]]:
    """Serve n endpoints from a separate process, so its CPU is not counted as the prober's."""
    specs = [
        {
            "host": str(FIRST_ADDRESS + i),
            "port": 11434,
            "mode": mode_for(i),
            "models": ["llama3:8b", "mistral:7b", "nomic-embed-text:latest"],
            "loaded": ["llama3:8b"],
        }
        for i in range(n)
    ]
    if ca is not None:
        for spec in specs:
            spec["certfile"], spec["keyfile"] = ca.issue(folder / "certs", [spec["host"]])
    spec_file = folder / f"fleet-{n}.json"
    spec_file.write_text(json.dumps({"endpoints": specs}))
    control = 11900 + n % 97
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.fake_ollama", "--spec", str(spec_file), "--control-port", str(control)],
        cwd=BASE_DIR,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "fleet.log", "wb"),
    )
    for _ in range(600):
        try:
            if len(httpx.get(f"http://127.0.0.1:{control}/endpoints", timeout=1).json()) == n:
                return proc, [(s["host"], s["mode"]) for s in specs]
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the fake fleet did not come up; see {folder / 'fleet.log'}")


def measure(n: int, folder: Path, timeout: float, scheme: str, ca: TestCA | None) -> dict:
    from django.conf import settings

    from registry import ollama, services
    from registry.models import Endpoint
    from registry.services import probe

    Endpoint.objects.all().delete()
    fleet, hosts = start_fleet(n, folder, ca if scheme == "https" else None)
    try:
        for host, _ in hosts:
            services.register_endpoint(host, 11434, scheme=scheme)
        modes = {host: mode for host, mode in hosts}

        # 1. The whole chunk task as a worker runs it: lease, probe, record (first and steady sweep).
        timings = []
        for _ in range(2):
            start = time.monotonic()
            probe(None)
            timings.append(time.monotonic() - start)

        # 2. The probing alone, for CPU per probe and per-endpoint latencies.
        targets = [ollama.ProbeTarget(e.id, e.address, e.port, e.scheme) for e in Endpoint.objects.all()]
        modes_by_id = {t.id: modes[t.address] for t in targets}
        healthy = [t for t in targets if modes[t.address] == "healthy"]
        allowed, bundle = services.allowed_networks(), settings.PROBE_CA_BUNDLE
        server = psutil.Process(fleet.pid)
        server_cpu, cpu = sum(server.cpu_times()[:2]), time.process_time()
        checked = ollama.probe_many_sync(healthy, timeout=timeout, allowed=allowed, ca_bundle=bundle)
        cpu_healthy = time.process_time() - cpu
        server_cpu = sum(server.cpu_times()[:2]) - server_cpu
        start = time.monotonic()
        results = ollama.probe_many_sync(targets, timeout=timeout, allowed=allowed, ca_bundle=bundle)
        probe_wall = time.monotonic() - start
    finally:
        fleet.terminate()
        fleet.wait(timeout=10)
    # Failures of endpoints meant to be healthy (a box too busy for the deadline shows here).
    failed: dict[str, int] = {}
    for r in [*checked, *(r for r in results if modes_by_id[r.id] == "healthy")]:
        if not r.ok:
            failed[r.error] = failed.get(r.error, 0) + 1
    latencies = {r.id: (r.latency_ms or 0) for r in results}
    healthy_ids = {t.id for t in healthy}
    ok = sum(1 for r in results if r.ok)
    return {
        "scheme": scheme,
        "endpoints": n,
        "answered_healthy": ok,
        "sweep_wall_s_first": round(timings[0], 2),
        "sweep_wall_s_steady": round(timings[1], 2),
        "probe_wall_s": round(probe_wall, 2),
        "cpu_s_per_1000_healthy_probes": round(cpu_healthy / len(healthy) * 1000, 3),
        "fake_fleet_cpu_s_per_1000": round(server_cpu / len(healthy) * 1000, 3),
        "healthy_probes_failed": failed,
        "slowest_healthy_probe_ms": max(latencies[i] for i in healthy_ids),
        "one_by_one_wall_s": round(sum(latencies.values()) / 1000, 1),
        "target_wall_s": timeout + 2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--schemes", default="http,https", help="http, https or both (https: TLS, see above)")
    parser.add_argument("--out", default=str(BASE_DIR / "bench" / "results" / "probe_sweep.json"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="probe-sweep-"))
    schemes = [s for s in args.schemes.split(",") if s]
    ca = TestCA.create(folder) if "https" in schemes else None
    setup_django(folder, args.timeout, ca.cert_path if ca else "")
    rows = [measure(int(n), folder, args.timeout, scheme, ca) for n in args.sizes.split(",") for scheme in schemes]
    keys = list(rows[0])
    print("  ".join(f"{k:>{max(len(k), 6)}}" for k in keys))
    for row in rows:
        print("  ".join(f"{row[k]!s:>{max(len(k), 6)}}" for k in keys))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"timeout_s": args.timeout, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
