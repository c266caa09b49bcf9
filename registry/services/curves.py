"""Reading history as curves: per stretch of time the tier that has it at the step asked
(registry.services.history writes both), binned to `step`, as column arrays."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import orjson
from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from registry.models import Endpoint, EndpointLatency, Host, ResourceRollup, ResourceSnapshot
from registry.services.common import NotFound, RegistryError
from registry.services.history import (
    _LATENCY_FIELDS,
    _ROLLUP_FIELDS,
    BUCKET_SECONDS,
    MINUTE,
    Epoch,
    _add_latency,
    _Bin,
    _floor,
    _json_text,
    _pct,
    _r,
    _raw_rows,
    _Stat,
)

MAX_POINTS = 3000  # per series: 24 h at step 60 (1,440) and 30 days at step 900 (2,880) fit
MAX_HOSTS = 100  # per request of several hosts' curves (the page asks for the rows on screen)
MAX_STEP = 86_400
STEP_LADDER = (60, 300, 900, 3600, 10_800, 21_600, 43_200, 86_400)  # the step chosen when none is given
_RELATIVE = re.compile(r"^-(\d{1,7})([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class _SparkBin:
    """What a sparkline shows of one host over one bin: average CPU, and the average VRAM of its
    fullest GPU (a host is as full as its fullest GPU; without GPU detail, the summed VRAM)."""

    __slots__ = ("cpu", "top")

    def __init__(self) -> None:
        self.cpu, self.top = _Stat(), _Stat()

    def add_raw(self, cpu, ram_used, ram_total, vram_used, vram_total, gpus_text) -> None:
        self.cpu.add(cpu)
        cards = orjson.loads(gpus_text) if gpus_text and gpus_text != "[]" else ()
        shares = [_pct(g.get("memory_used_bytes"), g.get("memory_total_bytes")) for g in cards]
        shares = [p for p in shares if p is not None]
        self.top.add(max(shares) if shares else _pct(vram_used, vram_total))

    def add_rollup(self, n, cpu_min, cpu_avg, cpu_max, ram_avg, ram_max, vram_avg, vram_max, gpus_text) -> None:
        self.cpu.add(cpu_avg, n)
        shares = [avg for _, avg, _ in orjson.loads(gpus_text) if avg is not None] if gpus_text else []
        self.top.add(max(shares) if shares else vram_avg, n)


def _spark_columns(bins: dict[int, _SparkBin], gpus_now: list) -> dict:
    order = sorted(bins)
    return {
        "t": order,
        "cpu": [_r(bins[t].cpu.avg()) for t in order],
        "vram_top": [_r(bins[t].top.avg()) for t in order],
    }


def parse_window(since: str | None, step: int | None, *, now: datetime) -> tuple[datetime, int]:
    """Check `since` (relative "-90m", "-24h", "-30d", or an ISO 8601 time; default the last 24 h)
    and `step` (seconds, a multiple of 60; default the finest keeping MAX_POINTS); return them."""
    since_at = _since(since or "-24h", now)
    oldest = now - timedelta(days=settings.HISTORY_RETENTION_DAYS)
    since_at = min(max(since_at, oldest), now)  # nothing is kept before; nothing is known after
    window = (now - since_at).total_seconds()
    if step is None:
        step = next((s for s in STEP_LADDER if window / s <= MAX_POINTS), MAX_STEP)
    if isinstance(step, bool) or not isinstance(step, int) or not MINUTE <= step <= MAX_STEP or step % MINUTE:
        raise RegistryError("invalid_step", f"step must be a whole number of minutes in seconds, 60 to {MAX_STEP}.")
    if math.ceil(window / step) > MAX_POINTS:
        needed = math.ceil(window / MAX_POINTS / MINUTE) * MINUTE
        raise RegistryError(
            "too_many_points",
            f"at most {MAX_POINTS} points per curve: this window needs step={needed} or more.",
        )
    return since_at, step


def _since(text: str, now: datetime) -> datetime:
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        seconds = int(relative.group(1)) * _UNIT[relative.group(2)]
        return now - timedelta(seconds=min(seconds, 10 * 365 * 86_400))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RegistryError(
            "invalid_since",
            'since must be a time ago ("-90m", "-24h", "-30d") or an ISO 8601 time ("2026-11-27T08:00:00Z").',
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _split(step: int, since: datetime, now: datetime, rolled_until: datetime | None) -> datetime:
    """Where raw rows take over from rolled-up ones: at a coarse step, after the last bucket rolled
    up (fewer rows to read); at a fine one, as far back as raw rows are kept."""
    if step >= BUCKET_SECONDS:
        split = rolled_until or since
    else:  # up to the next bucket boundary: the bucket across the raw cutoff is read rolled up, whole
        oldest_raw = now - timedelta(hours=settings.RESOURCE_RETENTION_HOURS)
        split = _floor(oldest_raw, BUCKET_SECONDS) + timedelta(seconds=BUCKET_SECONDS)
    return min(max(split, since), now)


def _rolled_until(queryset) -> datetime | None:
    last = queryset.aggregate(m=Max("start"))["m"]
    return last + timedelta(seconds=BUCKET_SECONDS) if last else None


def host_history(name: str, since: str | None, step: int | None, *, now: datetime | None = None) -> dict:
    """One host's CPU, RAM and VRAM (and per GPU) over time, as column arrays; NotFound for an unknown host."""
    now = now or timezone.now()
    since_at, step = parse_window(since, step, now=now)
    host = Host.objects.filter(name=name).values("id", "gpus").first()
    if host is None:
        raise NotFound("not_found", f"host {name!r} is not known.")
    series = _host_series({host["id"]: host["gpus"]}, since_at, step, now)
    return {"host": name, **_window(since_at, now, step), **series[host["id"]]}


def hosts_history(names: Iterable[str], since: str | None, step: int | None, *, now: datetime | None = None) -> dict:
    """Several hosts' average CPU and fullest-GPU VRAM in one reply (the page's sparklines: only
    what they draw, so 50 hosts' last hour stay small); unknown names are left out."""
    now = now or timezone.now()
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    if not wanted or len(wanted) > MAX_HOSTS:
        raise RegistryError("invalid_names", f"names must list 1 to {MAX_HOSTS} host names, comma-separated.")
    since_at, step = parse_window(since, step, now=now)
    hosts = {row["id"]: row for row in Host.objects.filter(name__in=wanted).values("id", "name")}
    series = _host_series(dict.fromkeys(hosts, []), since_at, step, now, _SparkBin, _spark_columns)
    return {**_window(since_at, now, step), "hosts": {hosts[i]["name"]: s for i, s in series.items()}}


def _window(since: datetime, now: datetime, step: int) -> dict:
    return {"since": since, "until": now, "step": step}


def _host_series(
    hosts: dict[int, list], since: datetime, step: int, now: datetime, kind: type = _Bin, columns=None
) -> dict[int, dict]:
    """host id -> its curves from `since` to `now`, binned by `step` (bins without data are left out);
    `kind` and `columns` choose what is kept of each bin and how it is written (all, or a sparkline's)."""
    columns = columns or _columns
    # The quarter hour across `since` is read whole: a curve never starts with a partial bucket.
    bins: dict[int, dict] = {host_id: {} for host_id in hosts}
    if hosts:
        # The roll-up is fleet-wide: the newest bucket of any host is a bound every host shares
        # (found in the `start` index, where a max over these hosts would read all their rows).
        rolled_until = _rolled_until(ResourceRollup.objects.all()) if step >= BUCKET_SECONDS else None
        split = _split(step, since, now, rolled_until)
        last = split - timedelta(seconds=BUCKET_SECONDS)  # the last bucket wholly before the split
        rolled = (
            ResourceRollup.objects.filter(
                host_id__in=list(hosts), start__gte=_floor(since, BUCKET_SECONDS), start__lte=last
            )
            .order_by()
            .annotate(at=Epoch("start"), gpus_text=_json_text("gpus"))
            .values_list("host_id", "at", *_ROLLUP_FIELDS, "gpus_text")
        )
        for host_id, at, *values in rolled:
            bins[host_id].setdefault(at // step * step, kind()).add_rollup(*values)
        raw = ResourceSnapshot.objects.filter(host_id__in=list(hosts), reported_at__gte=split, reported_at__lte=now)
        for host_id, at, *values in _raw_rows(raw):
            bins[host_id].setdefault(at // step * step, kind()).add_raw(*values)
    return {host_id: columns(bins[host_id], gpus) for host_id, gpus in hosts.items()}


def _columns(bins: dict[int, _Bin], gpus_now: list) -> dict:
    order = sorted(bins)
    col = [bins[t] for t in order]
    names = {g.get("index"): g.get("name", "") for g in gpus_now or ()}
    indexes = sorted({i for b in col for i in b.gpus})
    return {
        "t": order,
        "samples": [b.samples for b in col],
        "cpu": [_r(b.cpu.avg()) for b in col],
        "cpu_min": [_r(b.cpu.min()) for b in col],
        "cpu_max": [_r(b.cpu.max()) for b in col],
        "ram": [_r(b.ram.avg()) for b in col],
        "ram_max": [_r(b.ram.max()) for b in col],
        "vram": [_r(b.vram.avg()) for b in col],
        "vram_max": [_r(b.vram.max()) for b in col],
        "gpus": [
            {
                "index": i,
                "name": names.get(i, ""),
                "used": [_r(b.gpus[i].avg()) if i in b.gpus else None for b in col],
                "max": [_r(b.gpus[i].max()) if i in b.gpus else None for b in col],
            }
            for i in indexes
        ],
    }


def endpoint_history(endpoint_id: int, since: str | None, step: int | None, *, now: datetime | None = None) -> dict:
    """One endpoint's probe latency (avg, min, max ms), probes and failures over time, as column arrays."""
    now = now or timezone.now()
    since_at, step = parse_window(since, step, now=now)
    if not 0 < endpoint_id < 2**63 or not Endpoint.objects.filter(id=endpoint_id).exists():
        raise NotFound("not_found", f"endpoint {endpoint_id} does not exist.")
    rows = EndpointLatency.objects.filter(endpoint_id=endpoint_id)
    split = _split(step, since_at, now, _rolled_until(rows.filter(span=BUCKET_SECONDS)))
    last = split - timedelta(seconds=BUCKET_SECONDS)  # the last bucket wholly before the split
    older = rows.filter(span=BUCKET_SECONDS, start__gte=_floor(since_at, BUCKET_SECONDS), start__lte=last)
    newer = rows.filter(span=MINUTE, start__gte=_floor(split, MINUTE), start__lte=now)
    sums: dict[int, list] = {}
    for part in (older, newer):
        for at, *values in part.order_by().annotate(at=Epoch("start")).values_list("at", *_LATENCY_FIELDS):
            _add_latency(sums.setdefault(at // step * step, [0, 0, 0, None, None]), *values)
    order = sorted(sums)
    col = [sums[t] for t in order]
    return {
        "endpoint_id": endpoint_id,
        **_window(since_at, now, step),
        "t": order,
        "probes": [s[0] for s in col],
        "failures": [s[1] for s in col],
        "latency": [round(s[2] / (s[0] - s[1]), 1) if s[0] > s[1] else None for s in col],
        "latency_min": [s[3] for s in col],
        "latency_max": [s[4] for s in col],
    }
