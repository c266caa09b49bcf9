"""History over time: host resources and probe latency, raw and rolled up, and reading curves.

Two tiers, so that 30 days of history cost little room (sizes in README, History):
- raw: ResourceSnapshot (one row per host per RESOURCE_HISTORY_SECONDS, written with the
  report's group commit) and EndpointLatency minutes (span 60, made by the roll-up task from the
  one LatencySample row each probe chunk writes); kept RESOURCE_RETENTION_HOURS.
- rolled up: 15-minute min/avg/max (ResourceRollup, EndpointLatency span 900), written by the
  roll-up task for closed buckets only (idempotent upserts); kept HISTORY_RETENTION_DAYS.
Reading curves from both tiers is registry.services.curves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.db.models import BigIntegerField, F, Func, Max, Min, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from registry.models import Endpoint, EndpointLatency, LatencySample, ResourceRollup, ResourceSnapshot

MINUTE = 60
BUCKET_SECONDS = 900  # the rolled-up tier: one row per host (and per endpoint) per 15 minutes
GRACE_SECONDS = 60  # a bucket is rolled up this long after it closed (reports in flight are written)
SAMPLE_GRACE_SECONDS = 10  # probe chunks in flight when a minute ends are written within this


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


class Epoch(Func):
    """A timestamp as Unix seconds, computed by the database: thousands of rows are read per curve,
    and Django's per-row datetime conversion would cost more than the rest of the read."""

    output_field = BigIntegerField()

    def as_sqlite(self, compiler, connection, **extra):
        # %%%%s: the template becomes %%s, which Django's SQLite cursor turns into %s (not a parameter)
        return self.as_sql(
            compiler, connection, template="CAST(strftime('%%%%s', %(expressions)s) AS INTEGER)", **extra
        )

    def as_postgresql(self, compiler, connection, **extra):
        return self.as_sql(
            compiler, connection, template="CAST(EXTRACT(EPOCH FROM %(expressions)s) AS BIGINT)", **extra
        )


def _json_text(field: str) -> Cast:
    """A JSON column as its text, decoded by orjson (Django's JSONField decodes with json, per row)."""
    return Cast(F(field), TextField())


def _floor(moment: datetime, seconds: int) -> datetime:
    return datetime.fromtimestamp(_epoch(moment) // seconds * seconds, tz=UTC)


# --- latency samples (the probe path) -----------------------------------------------------


def add_latency_samples(results: Iterable, now: datetime) -> None:
    """Keep a probe chunk's latencies (null for a failed probe) as ONE compact row, inside the
    caller's transaction; the roll-up task turns them into per-endpoint minutes."""
    data = [[r.id, int(r.latency_ms) if r.ok and r.latency_ms is not None else None] for r in results]
    if data:
        LatencySample.objects.create(at=now, data=orjson.dumps(data).decode())


def _latency_upsert_sql() -> str:
    """Add to an endpoint's minute (or create it): repeated roll-ups of new samples add up."""
    q = connection.ops.quote_name
    table = q(EndpointLatency._meta.db_table)
    cols = ["endpoint_id", "start", "span", "probes", "failures", "total_ms", "min_ms", "max_ms"]

    def keep(col: str, op: str) -> str:  # portable min/max (SQLite has no LEAST, PostgreSQL no 2-arg MIN)
        c = q(col)
        return f"{c} = CASE WHEN {table}.{c} IS NULL OR EXCLUDED.{c} {op} {table}.{c} THEN EXCLUDED.{c} ELSE {table}.{c} END"

    added = [f"{q(c)} = {table}.{q(c)} + EXCLUDED.{q(c)}" for c in ("probes", "failures", "total_ms")]
    return (
        f"INSERT INTO {table} ({', '.join(q(c) for c in cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
        f"ON CONFLICT ({q('endpoint_id')}, {q('span')}, {q('start')}) DO UPDATE SET "
        + ", ".join([*added, keep("min_ms", "<"), keep("max_ms", ">")])
    )


def _minutes_from_samples(before: datetime) -> int:
    """Add the chunk samples taken before `before` to their endpoints' minutes, and delete them
    in the same transaction (so each sample counts once however often this runs)."""
    with transaction.atomic():
        samples = list(LatencySample.objects.filter(at__lt=before).values_list("id", "at", "data"))
        if not samples:
            return 0
        minutes: dict[tuple[int, datetime], list] = {}
        for _, at, data in samples:
            start = _floor(at, MINUTE)
            for endpoint_id, ms in orjson.loads(data):
                acc = minutes.setdefault((endpoint_id, start), [0, 0, 0, None, None])
                _add_latency(acc, 1, 0 if ms is not None else 1, ms or 0, ms, ms)
        adapt = connection.ops.adapt_datetimefield_value
        rows = [[i, adapt(start), MINUTE, *acc] for (i, start), acc in minutes.items()]
        with connection.cursor() as cursor:
            cursor.executemany(_latency_upsert_sql(), rows)
        LatencySample.objects.filter(id__in=[i for i, _, _ in samples]).delete()
    return len(rows)


# --- roll-up and retention (the beat tasks) -----------------------------------------------


def roll_up(*, now: datetime | None = None) -> int:
    """Turn closed 15-minute buckets of raw history into aggregates; return the rows written.

    Idempotent: it starts after the last bucket already rolled up, and a bucket written twice
    is written with the same values (upsert on its unique key).
    """
    now = now or timezone.now()
    minutes = _minutes_from_samples(_floor(now - timedelta(seconds=SAMPLE_GRACE_SECONDS), MINUTE))
    closed = _floor(now - timedelta(seconds=GRACE_SECONDS), BUCKET_SECONDS)  # buckets before this are closed
    return minutes + _roll_up_hosts(closed) + _roll_up_latency(closed)


def _first_open(last_rolled: datetime | None, oldest_raw: datetime | None) -> datetime | None:
    """The first bucket not rolled up yet (one range query reads them all, however many)."""
    if oldest_raw is None:
        return None
    first = _floor(oldest_raw, BUCKET_SECONDS)
    return max(first, last_rolled + timedelta(seconds=BUCKET_SECONDS)) if last_rolled else first


def _roll_up_hosts(closed: datetime) -> int:
    first = _first_open(
        ResourceRollup.objects.aggregate(m=Max("start"))["m"],
        ResourceSnapshot.objects.aggregate(m=Min("reported_at"))["m"],
    )
    if first is None or first >= closed:
        return 0
    raw = _raw_rows(ResourceSnapshot.objects.filter(reported_at__gte=first, reported_at__lt=closed))
    bins: dict[tuple[int, int], _Bin] = {}
    for host_id, at, *values in raw.iterator(chunk_size=5000):
        key = (host_id, at // BUCKET_SECONDS * BUCKET_SECONDS)
        bins.setdefault(key, _Bin()).add_raw(*values)
    rows = [b.rollup(host_id, datetime.fromtimestamp(t, tz=UTC)) for (host_id, t), b in bins.items()]
    ResourceRollup.objects.bulk_create(
        rows,
        batch_size=500,
        update_conflicts=True,
        unique_fields=["host", "start"],
        update_fields=[f.name for f in ResourceRollup._meta.concrete_fields if f.name not in ("id", "host", "start")],
    )
    return len(rows)


def _roll_up_latency(closed: datetime) -> int:
    first = _first_open(
        EndpointLatency.objects.filter(span=BUCKET_SECONDS).aggregate(m=Max("start"))["m"],
        EndpointLatency.objects.filter(span=MINUTE).aggregate(m=Min("start"))["m"],
    )
    if first is None or first >= closed:
        return 0
    minutes = (
        EndpointLatency.objects.filter(span=MINUTE, start__gte=first, start__lt=closed)
        .order_by()
        .annotate(at=Epoch("start"))
        .values_list("endpoint_id", "at", *_LATENCY_FIELDS)
    )
    sums: dict[tuple[int, int], list] = {}
    for endpoint_id, start, *values in minutes.iterator(chunk_size=5000):
        key = (endpoint_id, start // BUCKET_SECONDS * BUCKET_SECONDS)
        _add_latency(sums.setdefault(key, [0, 0, 0, None, None]), *values)
    rows = [
        EndpointLatency(
            endpoint_id=endpoint_id,
            start=datetime.fromtimestamp(t, tz=UTC),
            span=BUCKET_SECONDS,
            probes=s[0],
            failures=s[1],
            total_ms=s[2],
            min_ms=s[3],
            max_ms=s[4],
        )
        for (endpoint_id, t), s in sums.items()
    ]
    EndpointLatency.objects.bulk_create(
        rows,
        batch_size=500,
        update_conflicts=True,
        unique_fields=["endpoint_id", "span", "start"],
        update_fields=["probes", "failures", "total_ms", "min_ms", "max_ms"],
    )
    return len(rows)


_LATENCY_FIELDS = ("probes", "failures", "total_ms", "min_ms", "max_ms")


def _add_latency(acc: list, probes: int, failures: int, total: int, low: int | None, high: int | None) -> None:
    acc[0] += probes
    acc[1] += failures
    acc[2] += total
    if low is not None:
        acc[3] = low if acc[3] is None else min(acc[3], low)
    if high is not None:
        acc[4] = high if acc[4] is None else max(acc[4], high)


def prune_snapshots(*, now: datetime | None = None) -> int:
    """Delete raw resource history older than RESOURCE_RETENTION_HOURS (hosts keep their latest values)."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.RESOURCE_RETENTION_HOURS)
    deleted, _ = ResourceSnapshot.objects.filter(reported_at__lt=cutoff).delete()
    return deleted


def prune_history(*, now: datetime | None = None) -> int:
    """Roll up what is closed, then delete history past its retention; return the rows deleted.

    Rolling up first means a roll-up task that fell behind loses nothing to the raw cutoff.
    Latency of endpoints no longer registered goes too (no foreign key cascades to it).
    """
    now = now or timezone.now()
    roll_up(now=now)
    raw_cutoff = now - timedelta(hours=settings.RESOURCE_RETENTION_HOURS)
    old = now - timedelta(days=settings.HISTORY_RETENTION_DAYS)
    deleted = prune_snapshots(now=now)
    with transaction.atomic():
        deleted += EndpointLatency.objects.filter(span=MINUTE, start__lt=raw_cutoff).delete()[0]
        deleted += LatencySample.objects.filter(at__lt=raw_cutoff).delete()[0]
        deleted += EndpointLatency.objects.filter(start__lt=old).delete()[0]
        deleted += ResourceRollup.objects.filter(start__lt=old).delete()[0]
        deleted += EndpointLatency.objects.exclude(endpoint_id__in=Endpoint.objects.values("id")).delete()[0]
    return deleted


# --- what roll-ups and curves share ------------------------------------------------------


_RAW_FIELDS = ("cpu_percent", "ram_used_bytes", "ram_total_bytes", "vram_used_bytes", "vram_total_bytes")


def _raw_rows(queryset):
    """(host id, Unix seconds, cpu, ram used, ram total, vram used, vram total, gpus JSON text) per raw row."""
    return (
        queryset.order_by()
        .annotate(at=Epoch("reported_at"), gpus_text=_json_text("gpus"))
        .values_list("host_id", "at", *_RAW_FIELDS, "gpus_text")
    )


_ROLLUP_FIELDS = ("samples", "cpu_min", "cpu_avg", "cpu_max", "ram_avg", "ram_max", "vram_avg", "vram_max")


def _pct(used, total) -> float | None:
    return 100.0 * used / total if used is not None and total else None


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class _Stat:
    """Weighted mean, min and max of one quantity over a bin."""

    __slots__ = ("n", "total", "low", "high")

    def __init__(self) -> None:
        self.n, self.total, self.low, self.high = 0, 0.0, math.inf, -math.inf

    def add(self, avg: float | None, n: int = 1, low: float | None = None, high: float | None = None) -> None:
        if avg is None:
            return
        self.n += n
        self.total += avg * n
        self.low = min(self.low, avg if low is None else low)
        self.high = max(self.high, avg if high is None else high)

    def avg(self) -> float | None:
        return self.total / self.n if self.n else None

    def max(self) -> float | None:
        return self.high if self.n else None

    def min(self) -> float | None:
        return self.low if self.n else None


class _Bin:
    """Everything known of one host over one bin: from raw rows (weight 1) and rollups (weight = samples)."""

    __slots__ = ("samples", "cpu", "ram", "vram", "gpus")

    def __init__(self) -> None:
        self.samples = 0
        self.cpu, self.ram, self.vram = _Stat(), _Stat(), _Stat()
        self.gpus: dict[int, _Stat] = {}

    def add_raw(self, cpu, ram_used, ram_total, vram_used, vram_total, gpus_text) -> None:
        self.samples += 1
        self.cpu.add(cpu)
        self.ram.add(_pct(ram_used, ram_total))
        self.vram.add(_pct(vram_used, vram_total))
        if gpus_text and gpus_text != "[]":
            for g in orjson.loads(gpus_text):
                self.gpus.setdefault(g.get("index", 0), _Stat()).add(
                    _pct(g.get("memory_used_bytes"), g.get("memory_total_bytes"))
                )

    def add_rollup(self, n, cpu_min, cpu_avg, cpu_max, ram_avg, ram_max, vram_avg, vram_max, gpus_text) -> None:
        self.samples += n
        self.cpu.add(cpu_avg, n, cpu_min, cpu_max)
        self.ram.add(ram_avg, n, None, ram_max)
        self.vram.add(vram_avg, n, None, vram_max)
        for index, avg, high in orjson.loads(gpus_text) if gpus_text else ():
            self.gpus.setdefault(index, _Stat()).add(avg, n, None, high)

    def rollup(self, host_id: int, start: datetime) -> ResourceRollup:
        return ResourceRollup(
            host_id=host_id,
            start=start,
            samples=self.samples,
            cpu_min=_r(self.cpu.min()) or 0.0,
            cpu_avg=_r(self.cpu.avg()) or 0.0,
            cpu_max=_r(self.cpu.max()) or 0.0,
            ram_avg=_r(self.ram.avg()) or 0.0,
            ram_max=_r(self.ram.max()) or 0.0,
            vram_avg=_r(self.vram.avg()),
            vram_max=_r(self.vram.max()),
            gpus=[[i, _r(s.avg()), _r(s.max())] for i, s in sorted(self.gpus.items()) if s.n],
        )
