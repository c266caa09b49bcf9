"""Start-up benchmark: how long a warm `make run` takes to answer, and what the idle hub holds.

Starts `python -m agentcom_site.launcher run` on its own run folder and port, once cold (creates
the database) and then `--runs` times warm. For each warm start it measures the time until
`/healthz` answers 200 and, when `--idle` seconds later the hub has settled, the resident memory
of the launcher's whole process tree (RSS summed, and PSS, which counts shared pages once). Then
it stops the hub with SIGINT, as Ctrl-C would, and checks that no process of the tree survives.

Prints a table and writes bench/results/startup.json:
    .venv/bin/python bench/startup.py [--runs 5] [--idle 10]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from agentcom_site.launcher import healthz_answers  # noqa: E402
from agentcom_site.processes import free_port  # noqa: E402

MIB = 1024 * 1024


def start(folder: Path, port: int) -> subprocess.Popen:
    env = dict(
        os.environ,
        AGENTCOM_RUN_DIR=str(folder),
        PORT=str(port),
        DJANGO_SUPERUSER_PASSWORD="bench-password-1",
        REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
    )
    env.pop("DATABASE_URL", None)  # the launcher's default: SQLite in the run folder
    log = open(folder / "launcher.log", "ab")
    cmd = [sys.executable, "-m", "agentcom_site.launcher", "run"]
    return subprocess.Popen(cmd, cwd=BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 60) -> float:
    begin = time.monotonic()
    while time.monotonic() - begin < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the launcher exited with code {proc.returncode}")
        if healthz_answers("127.0.0.1", str(port)):
            return time.monotonic() - begin
        time.sleep(0.02)
    raise SystemExit("the hub did not answer /healthz")


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def memory(pid: int) -> dict:
    """RSS and PSS of every process in the tree, in MiB, with each process's name."""
    rows = []
    for proc in tree(pid):
        try:
            info = proc.memory_full_info()
            name = " ".join(proc.cmdline()[1:5]) or proc.name()
        except psutil.NoSuchProcess:
            continue
        rows.append({"process": name, "rss_mib": round(info.rss / MIB, 1), "pss_mib": round(info.pss / MIB, 1)})
    return {
        "processes": len(rows),
        "rss_mib": round(sum(r["rss_mib"] for r in rows), 1),
        "pss_mib": round(sum(r["pss_mib"] for r in rows), 1),
        "per_process": rows,
    }


def stop(proc: subprocess.Popen) -> tuple[float, int]:
    """SIGINT the launcher as Ctrl-C would; return the seconds it took and how many processes survived."""
    members = tree(proc.pid)
    begin = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(members, timeout=5)
    for survivor in alive:
        survivor.kill()
    return time.monotonic() - begin, len(alive)


def one_run(folder: Path, idle: float, settle: bool) -> dict:
    port = free_port()
    proc = start(folder, port)
    try:
        ready = wait_ready(proc, port)
        row = {"ready_s": round(ready, 2)}
        if settle:
            time.sleep(idle)  # idle memory is what the hub holds after it has settled
            row.update(memory(proc.pid))
    finally:
        stopped, survivors = stop(proc)
    row.update(stop_s=round(stopped, 2), survivors=survivors)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds to let the hub settle before measuring")
    parser.add_argument("--out", default=str(BASE_DIR / "bench" / "results" / "startup.json"))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="startup-"))
    cold = one_run(folder, args.idle, settle=False)
    warm = [one_run(folder, args.idle, settle=True) for _ in range(args.runs)]
    result = {
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # other work on the box slows starts
        "cold_ready_s": cold["ready_s"],
        "warm_ready_s_median": round(statistics.median(r["ready_s"] for r in warm), 2),
        "warm_ready_s_max": max(r["ready_s"] for r in warm),
        "idle_rss_mib_median": round(statistics.median(r["rss_mib"] for r in warm), 1),
        "idle_pss_mib_median": round(statistics.median(r["pss_mib"] for r in warm), 1),
        "processes": warm[-1]["processes"],
        "stop_s_max": max(r["stop_s"] for r in warm),
        "survivors_after_ctrl_c": sum(r["survivors"] for r in [cold, *warm]),
        "warm_runs": warm,
    }
    width = max(len(k) for k in result)
    print(f"{'metric':<{width}}  value")
    for key, value in result.items():
        if key != "warm_runs":
            print(f"{key:<{width}}  {value}")
    for row in warm[-1]["per_process"]:
        print(f"  {row['rss_mib']:>7} MiB RSS {row['pss_mib']:>7} MiB PSS  {row['process']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
