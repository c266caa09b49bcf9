"""History: 15-minute roll-ups of resources and latency, retention in bounded space, curves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from registry import services
from registry.models import Endpoint, EndpointLatency, Host, LatencySample, ResourceRollup, ResourceSnapshot
from registry.ollama import ProbeResult
from registry.schemas import SidecarReport
from registry.services.curves import MAX_POINTS
from registry.services.history import BUCKET_SECONDS

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # a bucket boundary
GiB = 1024**3


def gpu(index: int, used: int, total: int = 80) -> dict:
    return {
        "index": index,
        "name": f"H100 #{index}",
        "memory_used_bytes": used * GiB,
        "memory_total_bytes": total * GiB,
    }


def snapshot(host: Host, at: datetime, cpu: float, ram_used: int, gpus: list[dict]) -> ResourceSnapshot:
    return ResourceSnapshot(
        host=host,
        reported_at=at,
        cpu_percent=cpu,
        ram_used_bytes=ram_used * GiB,
        ram_total_bytes=100 * GiB,
        vram_used_bytes=sum(g["memory_used_bytes"] for g in gpus) if gpus else None,
        vram_total_bytes=sum(g["memory_total_bytes"] for g in gpus) if gpus else None,
        gpus=gpus,
    )


def report(host: str, cpu: float, *, gpus: int = 2) -> SidecarReport:
    cards = [gpu(i, 40 + i) for i in range(gpus)]
    return SidecarReport(
        host=host,
        hostname=host,
        cpu_percent=cpu,
        ram_used_bytes=30 * GiB,
        ram_total_bytes=100 * GiB,
        vram_used_bytes=sum(c["memory_used_bytes"] for c in cards) or None,
        vram_total_bytes=sum(c["memory_total_bytes"] for c in cards) or None,
        gpus=cards,
    )


@pytest.fixture
def hosts(db):
    return Host.objects.create(name="gpu-01"), Host.objects.create(name="cpu-01")


def test_a_closed_quarter_hour_rolls_up_into_min_avg_max_per_host_and_gpu(hosts):
    gpu_host, cpu_host = hosts
    ResourceSnapshot.objects.bulk_create(
        [
            snapshot(
                gpu_host,
                T0 + timedelta(minutes=m),
                cpu=10 * (m % 3 + 1),
                ram_used=20 + m,
                gpus=[gpu(0, 8 * (m % 2)), gpu(1, 40)],
            )
            for m in range(15)
        ]
        + [snapshot(cpu_host, T0 + timedelta(minutes=m), cpu=50, ram_used=50, gpus=[]) for m in range(15)]
        + [snapshot(gpu_host, T0 + timedelta(minutes=15), cpu=99, ram_used=99, gpus=[gpu(0, 80), gpu(1, 80)])]
    )
    written = services.roll_up(now=T0 + timedelta(minutes=16, seconds=30))  # the next bucket is still open
    assert written == 2
    row = ResourceRollup.objects.get(host=gpu_host)
    assert (row.start, row.samples) == (T0, 15)
    assert (row.cpu_min, row.cpu_avg, row.cpu_max) == (10, 20, 30)
    assert (row.ram_avg, row.ram_max) == (27, 34)
    # GPU 0 alternates 0 / 8 of 80 GiB (8 times 0 %, 7 times 10 %), GPU 1 holds 50 %
    assert row.gpus == [[0, 4.7, 10.0], [1, 50.0, 50.0]]
    assert (row.vram_avg, row.vram_max) == (27.3, 30.0)
    plain = ResourceRollup.objects.get(host=cpu_host)
    assert (plain.vram_avg, plain.vram_max, plain.gpus) == (None, None, [])


def test_roll_up_is_idempotent_and_leaves_open_buckets_alone(hosts):
    gpu_host, _ = hosts
    ResourceSnapshot.objects.bulk_create(
        [snapshot(gpu_host, T0 + timedelta(minutes=m), cpu=m, ram_used=m, gpus=[gpu(0, m)]) for m in range(40)]
    )
    now = T0 + timedelta(minutes=40)
    assert services.roll_up(now=now) == 2  # 12:00 and 12:15; 12:30 is still open
    first = list(ResourceRollup.objects.values())
    assert services.roll_up(now=now) == 0
    ResourceRollup.objects.filter(start=T0 + timedelta(minutes=15)).delete()
    assert services.roll_up(now=now) == 1  # the lost bucket comes back, the same
    assert list(ResourceRollup.objects.values().order_by("start")) != []
    again = {r["start"]: {k: v for k, v in r.items() if k != "id"} for r in ResourceRollup.objects.values()}
    assert again == {r["start"]: {k: v for k, v in r.items() if k != "id"} for r in first}
    assert services.roll_up(now=now + timedelta(minutes=20)) == 1  # 12:30 closed now


def probe(endpoint_id: int, latency: int | None, at: datetime) -> ProbeResult:
    return ProbeResult(
        endpoint_id, latency is not None, "" if latency else "connection refused", latency or 3, "", (), at
    )


def test_probe_latency_adds_up_per_minute_and_rolls_up_per_quarter_hour(hosts):
    endpoint = Endpoint.objects.create(host=hosts[0], address="127.0.0.1", status=Endpoint.Status.HEALTHY)
    for second, latency in ((0, 20), (15, 40), (30, None), (45, 30), (60, 100)):
        at = T0 + timedelta(seconds=second)
        services.record_probe_results([probe(endpoint.id, latency, at)], now=at)
    assert LatencySample.objects.count() == 5  # the probe path wrote one compact row per chunk
    assert services.roll_up(now=T0 + timedelta(seconds=75)) == 1  # the first minute closed; the second is open
    assert services.roll_up(now=T0 + timedelta(seconds=75)) == 0  # its samples were consumed: counted once
    minute = EndpointLatency.objects.get(endpoint_id=endpoint.id, span=60, start=T0)
    assert (minute.probes, minute.failures, minute.total_ms, minute.min_ms, minute.max_ms) == (4, 1, 90, 20, 40)
    assert LatencySample.objects.count() == 1
    services.roll_up(now=T0 + timedelta(minutes=2, seconds=15))
    assert not LatencySample.objects.exists()
    assert EndpointLatency.objects.filter(span=60).count() == 2  # one row per endpoint per minute, not per probe

    services.roll_up(now=T0 + timedelta(minutes=17))
    quarter = EndpointLatency.objects.get(endpoint_id=endpoint.id, span=BUCKET_SECONDS)
    assert (quarter.probes, quarter.failures, quarter.total_ms, quarter.min_ms, quarter.max_ms) == (5, 1, 190, 20, 100)

    fine = services.endpoint_history(endpoint.id, "-20m", 60, now=T0 + timedelta(minutes=17))
    assert fine["t"] == [int(T0.timestamp()), int(T0.timestamp()) + 60]
    assert fine["latency"] == [30.0, 100.0]
    assert (fine["probes"], fine["failures"], fine["latency_max"]) == ([4, 1], [1, 0], [40, 100])
    coarse = services.endpoint_history(endpoint.id, "-20m", 900, now=T0 + timedelta(minutes=17))
    assert (coarse["latency"], coarse["latency_min"], coarse["probes"]) == ([47.5], [20], [5])


def test_curves_read_raw_reports_for_the_last_day_and_rollups_before(hosts, settings):
    settings.RESOURCE_HISTORY_SECONDS = 60
    gpu_host, _ = hosts
    start = T0 - timedelta(days=3)
    ResourceSnapshot.objects.bulk_create(
        [
            snapshot(gpu_host, start + timedelta(minutes=m), cpu=m % 60, ram_used=10, gpus=[gpu(0, 40)])
            for m in range(3 * 1440)
        ]
    )
    now = T0
    for days_ago in (2, 1):  # the beat rolled up as the days went by
        services.roll_up(now=now - timedelta(days=days_ago))
    services.prune_history(now=now)  # rolls up, then drops raw rows older than 24 h
    assert ResourceSnapshot.objects.count() == 1440
    week = services.host_history("gpu-01", "-3d", 3600, now=now)
    assert len(week["t"]) == 72
    assert set(week["cpu"]) == {29.5} and set(week["cpu_max"]) == {59} and set(week["cpu_min"]) == {0}
    assert week["gpus"] == [
        {"index": 0, "name": "", "used": [50.0] * 72, "max": [50.0] * 72}
    ]  # the host row has no GPUs now, so no name
    assert week["samples"] == [60] * 72
    hour = services.host_history("gpu-01", "-1h", 60, now=now)
    assert hour["cpu"] == [float(m) for m in range(60)]
    assert hour["vram"] == [50.0] * 60 and hour["ram"] == [10.0] * 60
    # A fine step over two days: quarter hours where raw rows are gone, minutes after, none twice.
    two_days = services.host_history("gpu-01", "-2d", 60, now=now)
    assert sum(two_days["samples"]) == 2 * 1440
    assert len(two_days["t"]) == 97 + 1425  # the quarter hour across the raw cutoff is read rolled up


def test_a_fleet_that_starts_together_writes_its_history_spread_over_the_period(db, settings):
    """60 hosts whose sidecars started in the same second, reporting every 5 s for two minutes:
    one history row per host per minute, and the rows spread over the minute (not 60 rows in
    one batch every minute while the other batches write none)."""
    settings.RESOURCE_HISTORY_SECONDS = 60
    names = [f"gpu-{i:02d}" for i in range(60)]
    services.record_reports([report(name, 1) for name in names], now=T0)
    assert ResourceSnapshot.objects.count() == 60  # a host's first report always starts its history
    per_tick = []
    for tick in range(1, 25):
        before = ResourceSnapshot.objects.count()
        services.record_reports([report(name, tick) for name in names], now=T0 + timedelta(seconds=5 * tick))
        per_tick.append(ResourceSnapshot.objects.count() - before)
    assert sum(per_tick) == 2 * 60  # two minutes: two more rows per host
    assert {ResourceSnapshot.objects.filter(host__name=name).count() for name in names} == {3}
    assert max(per_tick) <= 10, per_tick  # ~5 per 5 s tick; all 60 at once before


def test_three_simulated_days_of_reports_and_probes_stay_in_bounded_space(db, settings):
    """Reports and probes of two hosts every 5 minutes for 3 days on a time-travelling clock
    (the real write paths), with the beat's prune every 10 minutes: raw rows stay within
    RESOURCE_RETENTION_HOURS, rollups within HISTORY_RETENTION_DAYS, replies within MAX_POINTS."""
    settings.RESOURCE_HISTORY_SECONDS = 300
    settings.RESOURCE_RETENTION_HOURS = 24
    settings.HISTORY_RETENTION_DAYS = 2
    services.record_reports([report("gpu-01", 1), report("gpu-02", 1)], now=T0)
    hosts = {h.name: h for h in Host.objects.all()}
    endpoint = Endpoint.objects.create(host=hosts["gpu-01"], address="127.0.0.1", status=Endpoint.Status.HEALTHY)
    gone = Endpoint.objects.create(host=hosts["gpu-02"], address="127.0.0.2", status=Endpoint.Status.HEALTHY)
    now, per_day = T0, 24 * 12
    for tick in range(1, 3 * per_day + 1):
        now = T0 + timedelta(minutes=5 * tick)
        services.record_reports([report("gpu-01", tick % 100), report("gpu-02", 5, gpus=0)], now=now)
        services.record_probe_results([probe(endpoint.id, 10 + tick % 7, now), probe(gone.id, 5, now)], now=now)
        if tick % 2 == 0:
            services.prune_history(now=now)
        if tick == per_day:
            Endpoint.objects.filter(id=gone.id).delete()
    for host in hosts.values():
        assert ResourceSnapshot.objects.filter(host=host).count() <= per_day + 1
        assert ResourceRollup.objects.filter(host=host).count() <= 2 * 96 + 1
    assert EndpointLatency.objects.filter(endpoint_id=endpoint.id, span=60).count() <= per_day + 1
    assert EndpointLatency.objects.filter(endpoint_id=endpoint.id, span=900).count() <= 2 * 96 + 1
    assert not EndpointLatency.objects.filter(endpoint_id=gone.id).exists()  # a removed endpoint's history goes
    assert LatencySample.objects.count() <= 2  # chunk samples live until the next roll-up

    curve = services.host_history("gpu-01", "-30d", 900, now=now)
    assert 2 * 96 - 1 <= len(curve["t"]) <= 2 * 96 + 1  # clamped to what is kept
    assert curve["gpus"][0]["name"] == "H100 #0"
    latency = services.endpoint_history(endpoint.id, "-30d", None, now=now)
    assert latency["step"] == 60 and len(latency["t"]) <= MAX_POINTS
    assert min(latency["latency_min"]) == 10 and max(latency["latency_max"]) == 16


@pytest.mark.parametrize(
    ("since", "step", "code"),
    [
        ("yesterday", 60, "invalid_since"),
        ("2026-02-30T00:00:00", 60, "invalid_since"),
        ("-24h", 90, "invalid_step"),
        ("-24h", 30, "invalid_step"),
        ("-30d", 60, "too_many_points"),
    ],
)
def test_bad_windows_are_refused_with_a_reason(hosts, since, step, code):
    with pytest.raises(services.RegistryError) as caught:
        services.host_history("gpu-01", since, step)
    assert caught.value.code == code
    assert "step=900" in caught.value.detail if code == "too_many_points" else True
