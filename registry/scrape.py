"""GET /metrics: the fleet read from the database and the hub's counters read from Redis.

One scrape target for the whole hub, served by any daphne: the fleet (endpoints, models, hosts)
is the database's state, read in five queries whatever the fleet size (two while no endpoint
changed: see `render`); the counters (probes, sweeps, reports, sockets, events) are summed
over every process in Redis (registry/metrics.py).
prometheus_client builds and writes the text format; nothing is formatted by hand.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import threading
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache

from django.conf import settings
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from registry import metrics, ollama, services
from registry.models import Endpoint, EndpointModel, Host, Token
from registry.status import is_stale

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SCRAPE_SCOPES = (Token.Scope.ADMIN, Token.Scope.METRICS)
ENDPOINT_LABELS = ["host", "address", "port", "name"]


class EndpointCollector:
    """Endpoints and their models as the database holds them now (three queries)."""

    def describe(self):
        return []  # nothing to check at registration; collect() reads the database

    def collect(self):
        yield from self._endpoints()
        yield from self._models()

    def _endpoints(self):
        by_status = GaugeMetricFamily("agentcom_endpoints", "Registered endpoints by status.", labels=["status"])
        up = GaugeMetricFamily(
            "agentcom_endpoint_up",
            "1 if the endpoint's last probes answered (healthy), else 0.",
            labels=ENDPOINT_LABELS,
        )
        held = GaugeMetricFamily("agentcom_endpoint_models", "Models the endpoint holds.", labels=ENDPOINT_LABELS)
        loaded = GaugeMetricFamily(
            "agentcom_endpoint_models_loaded", "Models loaded in the endpoint's memory.", labels=ENDPOINT_LABELS
        )
        counts = dict.fromkeys(Endpoint.Status.values, 0)
        models = {
            endpoint_id: (n, n_loaded)
            for endpoint_id, n, n_loaded in EndpointModel.objects.values("endpoint_id")
            .annotate(n=Count("id"), n_loaded=Count("id", filter=Q(loaded=True)))
            .values_list("endpoint_id", "n", "n_loaded")
        }
        rows = Endpoint.objects.order_by().values_list("id", "host__name", "address", "port", "name", "status")
        for endpoint_id, host, address, port, name, status in rows.iterator(chunk_size=2000):
            counts[status] += 1
            labels = [host, address, str(port), name]
            up.add_metric(labels, 1 if status == Endpoint.Status.HEALTHY else 0)
            n, n_loaded = models.get(endpoint_id, (0, 0))
            held.add_metric(labels, n)
            loaded.add_metric(labels, n_loaded)
        for status, count in counts.items():
            by_status.add_metric([status], count)
        return by_status, up, held, loaded

    def _models(self):
        hosts, loaded_on = services.fleet_summary()
        held = GaugeMetricFamily(
            "agentcom_model_hosts", "Hosts whose healthy endpoints hold the model.", labels=["model"]
        )
        loaded = GaugeMetricFamily(
            "agentcom_model_loaded_hosts", "Hosts whose healthy endpoints have the model loaded.", labels=["model"]
        )
        for name, count in hosts.items():
            held.add_metric([name], count)
            loaded.add_metric([name], loaded_on.get(name, 0))
        return held, loaded


class HostCollector:
    """Each host's last report (one query)."""

    def describe(self):
        return []

    def collect(self):
        yield from self._hosts(timezone.now())

    def _hosts(self, now: datetime):
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=["host"])

        states = {"reporting": 0, "stale": 0, "never": 0}
        families = {
            "cpu": gauge("agentcom_host_cpu_percent", "CPU use of the host, 0-100 (hosts reporting on time)."),
            "ram_used": gauge("agentcom_host_ram_used_bytes", "RAM in use on the host."),
            "ram_total": gauge("agentcom_host_ram_total_bytes", "RAM of the host."),
            "vram_used": gauge("agentcom_host_vram_used_bytes", "GPU memory in use, all GPUs (hosts with a GPU)."),
            "vram_total": gauge("agentcom_host_vram_total_bytes", "GPU memory, all GPUs (hosts with a GPU)."),
            "age": gauge("agentcom_host_report_age_seconds", "Seconds since the host's sidecar last reported."),
        }
        fields = ("name", "last_report_at", "cpu_percent", "ram_used_bytes", "ram_total_bytes")
        rows = Host.objects.order_by().values_list(*fields, "vram_used_bytes", "vram_total_bytes")
        stale_after = settings.STALE_AFTER_SECONDS  # read once, not per host
        for name, at, cpu, ram_used, ram_total, vram_used, vram_total in rows.iterator(chunk_size=2000):
            if at is None:
                states["never"] += 1
                continue
            labels = [name]
            families["age"].add_metric(labels, max(0.0, (now - at).total_seconds()))
            # A silent host's numbers are not its state now: leave them out, as the dashboard does.
            if is_stale(at, now, stale_after):
                states["stale"] += 1
                continue
            states["reporting"] += 1
            for key, value in (("cpu", cpu), ("ram_used", ram_used), ("ram_total", ram_total)):
                if value is not None:
                    families[key].add_metric(labels, value)
            if vram_total is not None:
                families["vram_used"].add_metric(labels, vram_used or 0)
                families["vram_total"].add_metric(labels, vram_total)
        hosts = GaugeMetricFamily(
            "agentcom_hosts",
            "Hosts by sidecar state: reporting, stale (silent longer than STALE_AFTER_SECONDS), never reported.",
            labels=["state"],
        )
        for state, count in states.items():
            hosts.add_metric([state], count)
        return hosts, *families.values()


class CounterCollector:
    """The counters every hub process adds to in Redis (registry/metrics.py), and open sockets."""

    def describe(self):
        return []

    def collect(self):
        redis_up = GaugeMetricFamily(
            "agentcom_metrics_redis_up", "1 if the hub's counters could be read from Redis for this scrape."
        )
        try:
            counters, sockets = read_counters()
        except Exception as exc:
            # Counters left out rather than shown as 0: a counter that drops and comes back would
            # look like a reset and a burst of increase to rate().
            logger.warning("metrics: Redis does not answer (%s); serving the fleet only", exc.__class__.__name__)
            redis_up.add_metric([], 0)
            yield redis_up
            return
        redis_up.add_metric([], 1)
        yield redis_up
        yield _histogram(counters, metrics.PROBE_DURATION, "agentcom_probe_duration_seconds",
                         "Wall time of one probe (version, tags, ps), failed ones included.")  # fmt: skip
        yield _by_reason(counters, metrics.PROBE_FAILURES, metrics.PROBE_FAILURE_REASONS,
                         "agentcom_probe_failures", "Failed probes by reason.")  # fmt: skip
        yield _histogram(counters, metrics.SWEEP_DURATION, "agentcom_probe_sweep_duration_seconds",
                         "Wall time of a probe sweep, from its start to its last chunk's end.")  # fmt: skip
        yield CounterMetricFamily(
            "agentcom_sidecar_reports_accepted", "Sidecar reports stored (answered 200).",
            value=counters.get(metrics.REPORTS_ACCEPTED, 0),
        )  # fmt: skip
        yield _by_reason(counters, metrics.REPORTS_REFUSED, metrics.REFUSAL_REASONS,
                         "agentcom_sidecar_reports_refused", "Sidecar reports refused, by the error code sent back.")  # fmt: skip
        yield CounterMetricFamily(
            "agentcom_probe_sweeps_unfinished",
            "Sweeps not finished when the next one started (a chunk expired unrun, or the sweep outran the interval).",
            value=counters.get(metrics.SWEEPS_UNFINISHED, 0),
        )  # fmt: skip
        yield CounterMetricFamily(
            "agentcom_publisher_events", "Registry events published to the dashboards (all processes).",
            value=counters.get(metrics.PUBLISHER_EVENTS, 0),
        )  # fmt: skip
        yield GaugeMetricFamily("agentcom_dashboard_sockets_open", "Dashboard WebSockets open (all daphnes).",
                                value=sockets)  # fmt: skip


def read_counters() -> tuple[dict[str, float], int]:
    """(every counter field summed over the hub's processes, dashboard sockets open now)."""
    namespace = settings.AGENTCOM_NAMESPACE
    client = metrics.tally.redis()
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(metrics.counters_key(namespace))
    pipe.smembers(metrics.socket_processes_key(namespace))
    raw, processes = pipe.execute()
    counters = {field.decode(): float(value) for field, value in raw.items()}
    processes = sorted(p.decode() for p in processes)
    sockets = 0
    if processes:
        values = client.mget([metrics.sockets_key(namespace, p) for p in processes])
        gone = [p for p, v in zip(processes, values, strict=True) if v is None]
        sockets = sum(int(v) for v in values if v is not None)
        if gone:  # processes that died (their key expired): forget them
            client.srem(metrics.socket_processes_key(namespace), *gone)
    return counters, sockets


def _histogram(counters: dict[str, float], metric: str, name: str, text: str) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text)
    buckets, running = [], 0.0
    for bound in (*metrics.HISTOGRAMS[metric], float("inf")):
        running += counters.get(metrics.bucket_field(metric, bound), 0)
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    family.add_metric([], buckets, counters.get(f"{metric}|sum", 0.0))
    return family


def _by_reason(counters, metric: str, reasons, name: str, text: str) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=["reason"])
    for reason in reasons:
        family.add_metric([reason], counters.get(metrics.labelled(metric, reason), 0))
    return family


def _registry(*collectors) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


# Writing the text costs more than reading the database (prometheus_client spends a few µs per
# sample; a scrape at 1,000 endpoints holds ~8,800). Two savings, both keeping what was read or
# written before, per process:
# - Endpoint families change only when an endpoint does (a probe that changes something, a
#   registration, a removal): they are read again (three of the five queries) only when the
#   endpoints' mark moved.
# - Each family's text, as prometheus_client wrote it, is kept with its samples and reused
#   while they are equal: when one endpoint goes down only `agentcom_endpoint_up` is written
#   again, not its models; RAM and VRAM totals rarely move (CPU, memory used and report ages
#   move at every scrape). The text format is a sequence of families, joined as they are.
_endpoints = _registry(EndpointCollector())
_live = _registry(HostCollector(), CounterCollector())
_cache_lock = threading.Lock()
_cache: dict[str, object] = {"mark": None, "families": []}
_family_text: dict[str, tuple[list, bytes]] = {}  # family name -> (its samples, their text)


class _One:
    """One family as a collector, so that prometheus_client writes it alone."""

    def __init__(self, family) -> None:
        self.family = family

    def collect(self):
        return [self.family]


def _text(family) -> bytes:
    kept = _family_text.get(family.name)
    if kept is None or (kept[0] is not family.samples and kept[0] != family.samples):
        kept = (family.samples, generate_latest(_One(family)))
        _family_text[family.name] = kept
    return kept[1]


def endpoints_mark() -> tuple:
    """What changes whenever an endpoint's visible state does: every visible change bumps its
    revision; a removal lowers the count; a registration adds the newest registered_at."""
    return tuple(
        Endpoint.objects.aggregate(
            n=Count("id"), revisions=Sum("revision"), last=Max("id"), newest=Max("registered_at")
        ).values()
    )


def forget_cache() -> None:
    with _cache_lock:
        _cache.update(mark=None, families=[])
        _family_text.clear()


@contextmanager
def _collector_paused():
    """Pause Python's cyclic garbage collector for one scrape.

    A scrape allocates ~9,000 samples (tuples and dicts, none in a cycle); each 700 allocations
    set off a collection, and the older generations' ones walk the whole Django process: with the
    collector running, a full scrape took 189 ms of CPU, paused 108 ms (bench/metrics_scrape.py).
    It runs again as usual right after.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def render() -> bytes:
    """The whole exposition, in the Prometheus text format."""
    mark = endpoints_mark()
    with _cache_lock, _collector_paused():
        if _cache["mark"] != mark:
            # Read after the mark: a change in between makes the next mark differ.
            _cache.update(families=list(_endpoints.collect()), mark=mark)
        return b"".join(_text(family) for family in [*_cache["families"], *_live.collect()])


def refusal(authorization: str | None, peer: str | None, forwarded_for: str | None) -> tuple[int, str, str] | None:
    """Why a scrape is refused as (status, code, detail), or None when it may read /metrics.

    An `Authorization: Bearer` admin or metrics token, or (without the header) a client address
    inside METRICS_ALLOWED_IPS (empty by default: tokens only).
    """
    if authorization is not None:
        if not authorization.startswith("Bearer "):
            return 401, "unauthorized", "Authorization header must be 'Bearer <token>'."
        token = services.authenticate_token(authorization[7:])
        if token is None:
            return 401, "unauthorized", "token is wrong or revoked."
        if token.scope not in SCRAPE_SCOPES:
            return 403, "forbidden", f"a {token.scope} token may not read /metrics; use an admin or metrics token."
        return None
    allowed = settings.METRICS_ALLOWED_IPS
    if allowed and _inside(services.client_address(peer, forwarded_for), _allowed_networks(allowed)):
        return None
    return 401, "unauthorized", "send 'Authorization: Bearer <token>' (an admin or metrics token)."


@lru_cache(maxsize=4)
def _allowed_networks(text: str):
    return ollama.parse_networks(text)


def _inside(address: str | None, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)
