"""The dashboard at fleet size: one daphne, a registry of N endpoints x 10 models, headless Chromium.

Rows are created through registry.services (registration, probe results, sidecar reports),
as the probe sweep and the sidecars would, with 3% unhealthy, 2% unknown, 1-4 GPUs per host
and 2% of hosts silent. Measured:

- REST: GET /api/v1/snapshot at 1,000 endpoints x 10 models (p50, p95, bytes), and one
  filtered page (?q=...&limit=50);
- the page at N endpoints: first rows painted after navigation, snapshot complete, largest
  WebSocket frame, time to apply an update of one row (p50/p95, in the page, JSON.parse
  included), JS heap and renderer memory, DOM nodes, whether the last row is reachable by scroll.

    .venv/bin/python bench/page_scale.py [--endpoints 5000] [--rest-endpoints 1000] [--updates 120]
    .venv/bin/python bench/page_scale.py --screenshots   # docs/dashboard*.png from a demo-like fleet

Writes bench/results/page_scale.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.hubstack import GIB, Hub, percentile, session_cookie, setup_django  # noqa: E402
from devtools.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

MODELS = [
    ("llama3:8b", "8.0B", 4_661_224_676),
    ("mistral:7b", "7.2B", 4_113_301_824),
    ("qwen2:7b", "7.6B", 4_431_400_262),
    ("gemma2:9b", "9.2B", 5_443_152_417),
    ("phi3:mini", "3.8B", 2_176_178_913),
    ("codellama:13b", "13B", 7_365_960_935),
    ("nomic-embed-text:latest", "137M", 274_302_450),
    ("llava:7b", "7B", 4_733_363_377),
    ("deepseek-r1:8b", "8.0B", 4_920_753_328),
    ("mixtral:8x7b", "47B", 26_442_481_545),
]


def address(i: int) -> str:
    return f"127.{10 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def model_infos(rng: random.Random, count: int, loaded: int):
    from django.utils import timezone

    from registry.ollama import ModelInfo

    now = timezone.now()
    chosen = MODELS[:count]
    return tuple(
        ModelInfo(
            name=name,
            digest=f"sha256:{rng.getrandbits(256):064x}",
            size=size,
            family=name.split(":")[0].split("-")[0],
            parameter_size=params,
            quantization="Q4_0",
            modified_at=now - timedelta(days=rng.randint(1, 90)),
            loaded=k < loaded,
            size_vram=size + 500_000_000 if k < loaded else None,
            expires_at=now + timedelta(minutes=5) if k < loaded else None,
        )
        for k, (name, params, size) in enumerate(chosen)
    )


def seed(start: int, stop: int, *, models: int = 10, names: bool = False, seed_value: int = 7) -> None:
    """Endpoints start..stop-1 registered, probed (3% failing twice, 2% never) and reported on."""
    from django.utils import timezone

    from registry import services
    from registry.ollama import ProbeResult
    from registry.schemas import SidecarReport

    rng = random.Random(seed_value + start)
    for lo in range(start, stop, 500):
        hi = min(stop, lo + 500)
        entries = [
            (address(i), 11434, f"rack {i // 40 + 1} · node {i % 40 + 1}" if names and i % 3 else "")
            for i in range(lo, hi)
        ]
        ids = services.register_endpoints(entries)
        now = timezone.now()
        results, failing = [], []
        for i, endpoint_id in zip(range(lo, hi), ids, strict=True):
            kind = i % 100
            if kind < 3:  # answered once (its models are last known), then failed twice
                results.append(ProbeResult(endpoint_id, True, "", 9, "0.5.7", model_infos(rng, 5, 1), now))
                failing.append(
                    ProbeResult(
                        endpoint_id,
                        False,
                        rng.choice(["connection refused", "timed out after 5 s", "HTTP 500"]),
                        5000,
                        "",
                        (),
                        now,
                    )
                )
            elif kind < 5:
                continue  # unknown: never answered yet
            else:
                count = models if models < 10 or i % 7 else 4 + i % 6
                results.append(
                    ProbeResult(endpoint_id, True, "", rng.randint(3, 40), "0.5.7", model_infos(rng, count, i % 3), now)
                )
        services.record_probe_results(results, now=now)
        for _ in range(2):
            if failing:
                services.record_probe_results(failing, now=now)
        reports = []
        for i in range(lo, hi):
            gpus = []
            for g in range(1 + i % 4):
                total = 24 * GIB if i % 2 else 80 * GIB
                used = int(total * (0.97 if g == 1 and i % 5 == 0 else rng.uniform(0.05, 0.8)))
                gpus.append({"index": g, "name": "NVIDIA A100 80GB" if total == 80 * GIB else "NVIDIA RTX 4090",
                             "memory_used_bytes": used, "memory_total_bytes": total,
                             "utilization_percent": round(rng.uniform(0, 100), 1)})  # fmt: skip
            reports.append(
                SidecarReport.model_validate(
                    {
                        "host": address(i),
                        "hostname": f"gpu-{i:04d}",
                        "cpu_percent": round(rng.uniform(2, 95), 1),
                        "ram_used_bytes": int(256 * GIB * rng.uniform(0.1, 0.9)),
                        "ram_total_bytes": 256 * GIB,
                        "vram_used_bytes": sum(g["memory_used_bytes"] for g in gpus) if i % 10 else None,
                        "vram_total_bytes": sum(g["memory_total_bytes"] for g in gpus) if i % 10 else None,
                        "gpus": gpus if i % 10 else [],
                    }
                )
            )
        silent = [r for i, r in zip(range(lo, hi), reports, strict=True) if i % 100 in (9, 50)]
        services.record_reports([r for r in reports if r not in silent], now=timezone.now())
        if silent:
            services.record_reports(silent, now=timezone.now() - timedelta(hours=1))


def seed_history(*, seed_value: int = 11) -> None:
    """For the screenshots: a day of believable history behind the fleet seed() made.

    Per host, a resource row every minute (smooth CPU, RAM and per-GPU VRAM ending at the values
    its last report set; the silent host's stop at that report), rolled up as the beat task would;
    per endpoint, a latency minute per minute, and a story of events: registered, first probe,
    models, an outage an hour long for a few, the current failures of the unhealthy ones.
    Written directly (bulk_create), on a fresh database.
    """
    import math

    from django.utils import timezone

    from registry.models import Endpoint, EndpointLatency, EndpointModel, Event, Host, ResourceSnapshot
    from registry.services.events import endpoint_label
    from registry.services.history import roll_up

    rng = random.Random(seed_value)
    now = timezone.now().replace(microsecond=0)
    day = 24 * 3600

    def wave(phases: tuple[float, ...], t: float) -> float:
        """A smooth curve: a daily swing, a swell of an hour and a half, a ripple of 7.5 minutes (two to a
        quarter hour, so the day's curves, read by the quarter hour, stay smooth)."""
        return (
            0.45 * math.sin(2 * math.pi * t / day + phases[0])
            + 0.4 * math.sin(2 * math.pi * t / 5400 + phases[1])
            + 0.12 * math.sin(2 * math.pi * t / 450 + phases[2])
        )

    def curve(end_value: float, amplitude: float, low: float, high: float):
        """The wave, ending at `end_value`; on some, a burst of work (a quarter hour) in the last hour."""
        phases = tuple(rng.uniform(0, 2 * math.pi) for _ in range(3))
        burst, centre, width = amplitude * rng.choice([0, 0.8, 1.2]), rng.uniform(900, 3000), rng.uniform(200, 400)

        def shape(ago: float) -> float:
            return amplitude * wave(phases, -ago) + burst * math.exp(-(((ago - centre) / width) ** 2))

        last = shape(0)
        return lambda ago: min(high, max(low, end_value + shape(ago) - last))

    snapshots = []
    for host in Host.objects.exclude(last_report_at=None):
        until = host.last_report_at.replace(microsecond=0)
        full = [g["memory_used_bytes"] / g["memory_total_bytes"] for g in host.gpus]
        gpu_curves = [
            (g, curve(f, 0.03 + 0.4 * min(f, 1 - f), 0.02, 0.99)) for g, f in zip(host.gpus, full, strict=True)
        ]
        cpu = curve(host.cpu_percent, 15 + 0.5 * min(host.cpu_percent, 100 - host.cpu_percent), 2, 99)
        ram = curve(host.ram_used_bytes / host.ram_total_bytes, 0.08, 0.05, 0.95)
        for minute in range(24 * 60):
            ago = minute * 60
            gpus = [
                {**g, "memory_used_bytes": int(g["memory_total_bytes"] * f(ago)),
                 "utilization_percent": round(min(100.0, max(0.0, g["utilization_percent"] + 40 * f(ago) - 40 * f(0))), 1)}
                for g, f in gpu_curves
            ]  # fmt: skip
            snapshots.append(
                ResourceSnapshot(
                    host_id=host.id,
                    reported_at=until - timedelta(seconds=ago),
                    cpu_percent=round(cpu(ago), 1),
                    ram_used_bytes=int(host.ram_total_bytes * ram(ago)),
                    ram_total_bytes=host.ram_total_bytes,
                    vram_used_bytes=sum(g["memory_used_bytes"] for g in gpus) if gpus else None,
                    vram_total_bytes=host.vram_total_bytes,
                    gpus=gpus,
                )
            )
    ResourceSnapshot.objects.bulk_create(snapshots, batch_size=2000)
    Host.objects.exclude(last_report_at=None).update(history_at=now)

    by = ["admin token 'ops'", "user alice", "admin token 'ci'"]
    reasons = ["connection refused", "timed out after 5 s", "HTTP 502"]
    probes = 4  # one probe every 15 s
    events, minutes = [], []
    for i, e in enumerate(Endpoint.objects.order_by("id")):
        label = endpoint_label(e.name, e.address, e.port)

        def event(kind: str, at, _e=e, _label=label, **detail) -> None:
            events.append(
                Event(at=at, kind=kind, endpoint_id=_e.id, endpoint_label=_label, host=_e.address, detail=detail)
            )

        if e.status == Endpoint.Status.UNKNOWN:  # just added: not answered yet
            registered = now - timedelta(seconds=40 + 20 * i)
            Endpoint.objects.filter(id=e.id).update(registered_at=registered)
            event(Event.Kind.REGISTERED, registered, by=by[0])
            continue
        registered = now - timedelta(days=5 if i % 3 == 0 else 1, hours=2, minutes=7 * i)
        Endpoint.objects.filter(id=e.id).update(registered_at=registered)
        event(Event.Kind.REGISTERED, registered, by=by[i % len(by)])
        first = registered + timedelta(seconds=12)
        event(Event.Kind.STATUS, first, **{"from": "unknown", "to": "healthy", "reason": ""})
        for name in EndpointModel.objects.filter(endpoint=e).values_list("name", flat=True):
            event(Event.Kind.MODEL_ADDED, first, model=name)
        down: list[tuple] = []  # (from, until) in seconds ago
        if i % 3 == 0:  # an older outage: 7-day uptime below the day's
            down.append((3 * day + 3600 * (i % 5), 3 * day + 3600 * (i % 5) - 1800 - 300 * (i % 4)))
        if i % 7 == 0:  # an outage an hour long today
            start = 3600 * (3 + i % 9)
            down.append((start, start - 3600 - 60 * (i % 5)))
        if e.status == Endpoint.Status.UNHEALTHY:  # down now
            down.append((600 + 900 * i, 0))
        for start, end in down:
            reason = e.last_error if end == 0 else reasons[i % len(reasons)]
            event(
                Event.Kind.STATUS,
                now - timedelta(seconds=start),
                **{"from": "healthy", "to": "unhealthy", "reason": reason},
            )
            if end:
                event(
                    Event.Kind.STATUS,
                    now - timedelta(seconds=end),
                    **{"from": "unhealthy", "to": "healthy", "reason": ""},
                )
        loaded = EndpointModel.objects.filter(endpoint=e, loaded=True).values_list("name", flat=True)
        for k, name in enumerate(loaded):
            event(Event.Kind.MODEL_LOADED, now - timedelta(minutes=3 + 17 * k + 5 * i), model=name)
        base = e.latency_ms or rng.randint(5, 30)
        lat = curve(base, base * 0.6, 2, 5000)
        oldest = min(day, int((now - registered).total_seconds()) // 60 * 60)
        for ago in range(60, oldest, 60):
            failed = sum(1 for start, end in down if end <= ago < start)
            ms = [max(1, round(lat(ago) * rng.uniform(0.8, 1.3))) for _ in range(probes)]
            minutes.append(
                EndpointLatency(
                    endpoint_id=e.id,
                    start=_floor_minute(now - timedelta(seconds=ago)),
                    span=60,
                    probes=probes,
                    failures=probes if failed else 0,
                    total_ms=0 if failed else sum(ms),
                    min_ms=None if failed else min(ms),
                    max_ms=None if failed else max(ms),
                )
            )
    for host in Host.objects.exclude(last_report_at=None).exclude(last_report_at__gte=now - timedelta(minutes=5)):
        silent_at = host.last_report_at + timedelta(seconds=95)
        Host.objects.filter(id=host.id).update(silent_since=silent_at)
        events.append(
            Event(
                at=silent_at,
                kind=Event.Kind.HOST_SILENT,
                host=host.name,
                detail={"last_report_at": host.last_report_at.isoformat(), "silent_for": 95},
            )
        )
    Event.objects.all().delete()  # seed()'s events all happened just now; tell the day instead
    Event.objects.bulk_create(events, batch_size=2000)
    EndpointLatency.objects.bulk_create(minutes, batch_size=2000)
    roll_up(now=now)


def _floor_minute(moment):
    return moment.replace(second=0, microsecond=0)


def measure_rest(hub: Hub, cookie: str, rounds: int = 15) -> dict:
    import httpx

    with httpx.Client(base_url=hub.url, cookies={"sessionid": cookie}, timeout=30) as client:
        client.get("/api/v1/snapshot")  # warm: model lists cached, connections open
        times, size = [], 0
        for _ in range(rounds):
            t = time.perf_counter()
            reply = client.get("/api/v1/snapshot")
            times.append((time.perf_counter() - t) * 1000)
            size = len(reply.content)
            assert reply.status_code == 200, reply.text[:200]
        t = time.perf_counter()
        page = client.get("/api/v1/snapshot", params={"q": "llama3", "status": "healthy", "limit": 50})
        page_ms = (time.perf_counter() - t) * 1000
        endpoints = len(reply.json()["endpoints"])
    return {
        "endpoints": endpoints,
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(percentile(times, 95), 1),
        "bytes": size,
        "filtered_page_ms": round(page_ms, 1),
        "filtered_page_total": page.json()["total"],
    }


def renderer_memory_mb(pid_of_browser: int) -> tuple[float | None, float | None]:
    """(private, resident) memory of the page's renderer, the largest renderer of this browser.

    Private (USS) is what the tab costs, as Chromium's task manager counts a tab's footprint;
    resident (RSS) adds the shared libraries every Chromium process maps.
    """
    import psutil

    best = None
    for proc in psutil.Process(pid_of_browser).children(recursive=True):
        try:
            if "--type=renderer" in proc.cmdline() and "--extension-process" not in proc.cmdline():
                info = proc.memory_full_info()
                if best is None or info.uss > best.uss:
                    best = info
        except psutil.Error:
            pass
    return (round(best.uss / 2**20, 1), round(best.rss / 2**20, 1)) if best else (None, None)


def browser_pid() -> int:
    """The Chromium that Playwright started (the newest chromium process whose parent is not one)."""
    import psutil

    mine = [p for p in psutil.Process().children(recursive=True) if "chromium" in " ".join(p.cmdline()[:1])]
    roots = [p for p in mine if not any(q.pid == p.ppid() for q in mine)]
    return max(roots, key=lambda p: p.create_time()).pid


def measure_page(hub: Hub, cookie: str, updates: int) -> dict:
    from playwright.sync_api import sync_playwright

    from registry import services
    from registry.models import Endpoint

    frames: list[int] = []
    # The ORM refuses to run beside Playwright's event loop: read and write from a thread.
    pool = ThreadPoolExecutor(max_workers=1)
    ids = pool.submit(lambda: list(Endpoint.objects.order_by("?").values_list("id", flat=True)[:updates])).result()

    def rename(n: int, endpoint_id: int) -> None:
        services.update_endpoint(endpoint_id, name=f"renamed {n}")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(
            viewport={"width": 1400, "height": 900}, bypass_csp=True
        )  # the bench evaluates its probes; the page needs no eval
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": hub.url}])
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(len(payload))))
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")
        page.goto(f"{hub.url}/dashboard/")
        page.wait_for_selector("#llm-registry-body tr[data-endpoint-id]", timeout=60_000)
        page.wait_for_function("document.getElementById('llm-connection-state').textContent === 'live'", timeout=60_000)
        first_rows = page.evaluate("window.llmDashboard.metrics.firstRowsAt")
        complete = page.evaluate("performance.now()")
        total = page.evaluate("window.llmDashboard.entries.size")

        # Updates of one row each, as an operator renaming endpoints would cause (one frame each).
        page.evaluate("window.llmDashboard.metrics.apply = []")
        for n, endpoint_id in enumerate(ids):
            pool.submit(rename, n, endpoint_id).result()
            page.wait_for_timeout(300)  # slower than the page's frame cap: one row per frame
        page.wait_for_function(f"window.llmDashboard.metrics.apply.length >= {int(len(ids) * 0.95)}", timeout=30_000)
        applied = page.evaluate("window.llmDashboard.metrics.apply")

        # Scroll to the end: the last row of the fleet is reachable.
        page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(300)
        last_id = page.evaluate("String(window.llmDashboard.order[window.llmDashboard.order.length - 1].row.id)")
        reachable = page.locator(f'tr[data-endpoint-id="{last_id}"]').count() == 1
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        cdp.send("HeapProfiler.collectGarbage")
        metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
        uss, rss = renderer_memory_mb(browser_pid())
        browser.close()
    return {
        "endpoints": total,
        "first_rows_ms": round(first_rows),
        "snapshot_complete_ms": round(complete),
        "frames": len(frames),
        "largest_frame_kib": round(max(frames) / 1024, 1),
        "update_apply_p50_ms": round(statistics.median(applied), 2),
        "update_apply_p95_ms": round(percentile(applied, 95), 2),
        "updates_applied": len(applied),
        "js_heap_used_mb": round(metrics["JSHeapUsedSize"] / 2**20, 1),
        "js_heap_total_mb": round(metrics["JSHeapTotalSize"] / 2**20, 1),
        "renderer_private_mb": uss,
        "renderer_rss_mb": rss,
        "dom_nodes": int(metrics["Nodes"]),
        "last_row_reachable": reachable,
        "page_errors": errors,
    }


def screenshots(hub: Hub, cookie: str) -> None:
    """docs/dashboard.png (desktop), dashboard-1024.png, dashboard-390.png, dashboard-dark.png; and
    dashboard-details.png (a row's details open) and dashboard-route.png (a model's route open)."""
    from playwright.sync_api import sync_playwright

    shots = [
        ("dashboard.png", 1400, 900, "light", None),
        ("dashboard-1024.png", 1024, 800, "light", None),
        ("dashboard-390.png", 390, 844, "light", None),
        ("dashboard-dark.png", 1400, 900, "dark", None),
        ("dashboard-details.png", 1400, 900, "light", open_details),
        ("dashboard-route.png", 1400, 900, "light", open_route),
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for name, width, height, scheme, action in shots:
            context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme)
            context.add_cookies([{"name": "sessionid", "value": cookie, "url": hub.url}])
            page = context.new_page()
            page.goto(f"{hub.url}/dashboard/")
            page.wait_for_selector('#llm-connection-state:text-is("live")')  # no eval: the page's CSP
            page.wait_for_selector("#llm-registry-body svg.llm-spark", state="attached")  # sparklines came
            page.wait_for_timeout(1200)  # bars finish their width transition
            if action:
                action(page)
            page.screenshot(path=str(BASE_DIR / "docs" / name))
            print(f"wrote docs/{name}")
            context.close()
        browser.close()


def open_details(page) -> None:
    """The details of an endpoint that was down for an hour today (address(7)), scrolled to its
    timeline and day curves (the popover is at most 640 px high)."""
    page.locator(f'#llm-registry-body tr:has-text("{address(7)}") button.llm-host-btn').first.click()
    page.wait_for_selector("#llm-details .llm-event")
    page.wait_for_selector("#llm-details svg.llm-day-chart")
    box = page.locator("#llm-details").bounding_box()
    head = page.locator("#llm-details .details-head").bounding_box()
    timeline = page.locator("#llm-details .llm-timeline").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, timeline["y"] - head["y"] - head["height"] - 8)
    page.wait_for_timeout(500)


def open_route(page) -> None:
    """Where to run llama3:8b (loaded on many hosts): its chip's route popover."""
    page.locator('button.llm-fleet-route[data-model="llama3:8b"]').click()
    page.wait_for_selector("#llm-details .llm-route-top")
    page.wait_for_timeout(300)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", type=int, default=5000)
    parser.add_argument("--rest-endpoints", type=int, default=1000)
    parser.add_argument("--updates", type=int, default=120)
    parser.add_argument("--screenshots", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="page-scale-"))
    env = setup_django(folder, None, probe_interval=3600, PROBE_ON_REGISTER="false")
    cookie = session_cookie()
    hub = Hub(folder, env, components=("daphne",)).start()
    try:
        if args.screenshots:
            seed(0, 36, models=10, names=True)
            t = time.perf_counter()
            seed_history()
            print(f"seeded a day of history in {time.perf_counter() - t:.1f} s")
            screenshots(hub, cookie)
            return
        t = time.perf_counter()
        seed(0, args.rest_endpoints)
        print(f"seeded {args.rest_endpoints} endpoints in {time.perf_counter() - t:.0f} s")
        rest = measure_rest(hub, cookie)
        t = time.perf_counter()
        seed(args.rest_endpoints, args.endpoints)
        print(f"seeded {args.endpoints} endpoints in all ({time.perf_counter() - t:.0f} s more)")
        page = measure_page(hub, cookie, args.updates)
    finally:
        hub.stop()
    rows = [
        ("GET /api/v1/snapshot", f"{rest['endpoints']:,} endpoints x 10 models", f"p50 {rest['p50_ms']} ms, p95 {rest['p95_ms']} ms, {rest['bytes'] / 2**20:.1f} MiB", "p50 < 100 ms"),
        ("GET /api/v1/snapshot?q=&status=&limit=50", f"{rest['filtered_page_total']:,} match", f"{rest['filtered_page_ms']} ms", ""),
        ("first rows painted", f"{page['endpoints']:,} endpoints", f"{page['first_rows_ms']} ms after navigation", "< 2,000 ms"),
        ("snapshot complete", "", f"{page['snapshot_complete_ms']} ms, {page['frames']} frames", ""),
        ("largest WebSocket frame", "", f"{page['largest_frame_kib']} KiB", "<= 256 KiB"),
        ("apply a one-row update", f"{page['updates_applied']} updates", f"p50 {page['update_apply_p50_ms']} ms, p95 {page['update_apply_p95_ms']} ms", "p95 < 16 ms"),
        ("tab memory", "", f"renderer private {page['renderer_private_mb']} MB (JS heap {page['js_heap_used_mb']} MB; RSS {page['renderer_rss_mb']} MB)", "< 100 MB"),
        ("DOM nodes", "", f"{page['dom_nodes']:,}", ""),
        ("last row reachable by scroll", "", str(page["last_row_reachable"]), "True"),
    ]  # fmt: skip
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in [("measure", "size", "result", "target"), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))
    if page["page_errors"]:
        print("page errors:", page["page_errors"])
    out = BASE_DIR / "bench" / "results" / "page_scale.json"
    out.write_text(json.dumps({"rest": rest, "page": page}, indent=2) + "\n")
    print(f"wrote {out.relative_to(BASE_DIR)}")


if __name__ == "__main__":
    main()
