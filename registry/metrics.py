"""Counters every hub process adds to, summed in Redis, so that /metrics on any daphne shows the whole hub.

Probes run in Celery workers, reports and dashboard sockets land on whichever daphne the load
balancer picked, events are published by every process that changes state. A scrape of one
process would see a slice; so each process adds its increments to one hash per hub in Redis
(under the hub's namespace) and /metrics reads that hash: one scrape target, correct whatever
the number of daphnes and workers, with no per-process target list to keep up to date.

Hot paths (hundreds of reports a second, a probe chunk of 250 results) only add to a dict under
a lock; a background thread sends the sums every FLUSH_SECONDS in one pipeline (HINCRBY /
HINCRBYFLOAT). What a process counted in its last second is lost if it is killed; a counter in
Redis never goes back, so Prometheus's rate() needs no reset handling unless Redis itself is
emptied.

Keys (NS = AGENTCOM_NAMESPACE):
- `NS:metrics:counters`: hash; field `metric` or `metric|label value`; histogram buckets as
  `metric|le=<bound>` (per bucket, not cumulative), plus `metric|sum` and `metric|count`.
- `NS:metrics:sockets:<process>`: this process's open dashboard sockets, refreshed every flush
  and expiring after SOCKETS_TTL_SECONDS, so a daphne that died stops counting by itself;
  `NS:metrics:socket-processes` (set) names them for the scrape.
- `NS:metrics:sweep:<id>`: a sweep in progress (start time by Redis's clock, chunks left).

Imports no Django model: registry and dashboard may both import it.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import math
import os
import secrets
import socket
import threading
from collections.abc import Iterable

import redis
from django.conf import settings

from registry.ollama import FAILURE_REASONS, ProbeResult, failure_reason

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
SOCKETS_TTL_SECONDS = 15
SWEEP_TTL_FACTOR = 4  # a sweep whose chunks never all finish is forgotten after this many intervals

# Metric names as stored (registry/scrape.py turns them into Prometheus families).
PROBE_DURATION = "probe_duration"
PROBE_FAILURES = "probe_failures"
SWEEP_DURATION = "sweep_duration"
REPORTS_ACCEPTED = "reports_accepted"
REPORTS_REFUSED = "reports_refused"
PUBLISHER_EVENTS = "publisher_events"
SWEEPS_UNFINISHED = "sweeps_unfinished"

PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SWEEP_BUCKETS = (0.5, 1.0, 2.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
HISTOGRAMS = {PROBE_DURATION: PROBE_BUCKETS, SWEEP_DURATION: SWEEP_BUCKETS}

# What a sidecar is told when its report is refused (the `error` code of the reply); any other
# code counts as "other", so the label never grows a series per message.
REFUSAL_REASONS = (
    "unauthorized",
    "forbidden",
    "wrong_host",
    "not_this_machine",
    "address_not_allowed",
    "invalid_report",
    "invalid_input",
    "inconsistent_report",
    "invalid_json",
    "invalid_frame",
    "too_large",
    "overloaded",
    "other",
)
PROBE_FAILURE_REASONS = FAILURE_REASONS


def counters_key(namespace: str) -> str:
    return f"{namespace}:metrics:counters"


def sockets_key(namespace: str, process: str) -> str:
    return f"{namespace}:metrics:sockets:{process}"


def socket_processes_key(namespace: str) -> str:
    return f"{namespace}:metrics:socket-processes"


def sweep_key(namespace: str, sweep_id: str) -> str:
    return f"{namespace}:metrics:sweep:{sweep_id}"


def labelled(metric: str, value: str) -> str:
    return f"{metric}|{value}"


def bucket_field(metric: str, bound: float) -> str:
    return f"{metric}|le={'+Inf' if math.isinf(bound) else repr(float(bound))}"


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)


class Tally:
    """One process's increments since the last flush, and its open dashboard sockets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sending = threading.Lock()  # one flush at a time: a flush returns once its sums are in Redis
        self.counts: dict[str, int] = {}
        self.sums: dict[str, float] = {}
        self.sockets = 0
        self.sockets_written: int | None = None  # what Redis holds for this process (None: nothing)
        self.process = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.client: redis.Redis | None = None

    def reset_after_fork(self) -> None:
        """A forked child counts for itself, with its own thread and connection."""
        self.__init__()

    def _started(self) -> None:
        # Called with the lock held.
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="metrics-flusher", daemon=True)
            self.thread.start()

    def add(self, field: str, amount: int = 1) -> None:
        with self.lock:
            self.counts[field] = self.counts.get(field, 0) + amount
            self._started()

    def observe(self, metric: str, values: Iterable[float]) -> None:
        """Add observations (seconds) to the histogram `metric`."""
        bounds = HISTOGRAMS[metric]
        with self.lock:
            for value in values:
                index = bisect.bisect_left(bounds, value)
                field = bucket_field(metric, bounds[index] if index < len(bounds) else math.inf)
                self.counts[field] = self.counts.get(field, 0) + 1
                self.counts[f"{metric}|count"] = self.counts.get(f"{metric}|count", 0) + 1
                self.sums[f"{metric}|sum"] = self.sums.get(f"{metric}|sum", 0.0) + value
            self._started()

    def socket_change(self, delta: int) -> None:
        with self.lock:
            self.sockets = max(0, self.sockets + delta)
            self._started()

    def redis(self) -> redis.Redis:
        if self.client is None:
            self.client = redis_client()
        return self.client

    def flush(self) -> None:
        """Send what was counted since the last flush (kept for the next one if Redis fails)."""
        with self.sending:
            self._flush(settings.AGENTCOM_NAMESPACE)

    def _flush(self, namespace: str) -> None:
        with self.lock:
            counts, sums, self.counts, self.sums = self.counts, self.sums, {}, {}
            sockets = self.sockets
        refresh = sockets > 0 or (self.sockets_written or 0) > 0
        if not (counts or sums or refresh):
            return
        try:
            # MULTI/EXEC: all of it or none, so a batch put back after a failure is never counted twice.
            pipe = self.redis().pipeline(transaction=True)
            key = counters_key(namespace)
            for field, amount in counts.items():
                pipe.hincrby(key, field, amount)
            for field, amount in sums.items():
                pipe.hincrbyfloat(key, field, amount)
            if sockets > 0:
                pipe.set(sockets_key(namespace, self.process), sockets, ex=SOCKETS_TTL_SECONDS)
                pipe.sadd(socket_processes_key(namespace), self.process)
            elif refresh:
                pipe.delete(sockets_key(namespace, self.process))
                pipe.srem(socket_processes_key(namespace), self.process)
            pipe.execute()
            self.sockets_written = sockets
        except Exception:
            logger.warning("could not send metrics to Redis; keeping them for the next try", exc_info=True)
            with self.lock:  # put back: nothing counted is lost while Redis is away
                for field, amount in counts.items():
                    self.counts[field] = self.counts.get(field, 0) + amount
                for field, amount in sums.items():
                    self.sums[field] = self.sums.get(field, 0.0) + amount

    def _run(self) -> None:
        while not self.stopped.wait(FLUSH_SECONDS):
            try:
                self.flush()
            except Exception:  # the loop boundary: never let the flusher die
                logger.exception("metrics flush failed")

    def close(self) -> None:
        """At exit: send what is pending and stop counting this process's sockets."""
        self.stopped.set()
        with self.lock:
            self.sockets = 0
        if self.thread is not None:
            self.flush()


tally = Tally()
atexit.register(tally.close)
os.register_at_fork(after_in_child=tally.reset_after_fork)


# -- what the hub counts ------------------------------------------------------------------------


def probes_done(results: Iterable[ProbeResult]) -> None:
    """Count a run of probes: each one's duration, and each failure by reason."""
    results = list(results)
    tally.observe(PROBE_DURATION, [r.latency_ms / 1000 for r in results if r.latency_ms is not None])
    for result in results:
        if not result.ok:
            tally.add(labelled(PROBE_FAILURES, failure_reason(result.error)))


def reports_accepted(count: int = 1) -> None:
    tally.add(REPORTS_ACCEPTED, count)


def report_refused(code: str) -> None:
    tally.add(labelled(REPORTS_REFUSED, code if code in REFUSAL_REASONS else "other"))


def events_published(count: int = 1) -> None:
    tally.add(PUBLISHER_EVENTS, count)


def socket_opened() -> None:
    tally.socket_change(1)


def socket_closed() -> None:
    tally.socket_change(-1)


def sweep_started(sweep_id: str, chunks: int) -> None:
    """Note a sweep's start (by Redis's clock: its chunks may finish on other machines)."""
    if not chunks:
        return
    client = tally.redis()
    seconds, micros = client.time()
    key = sweep_key(settings.AGENTCOM_NAMESPACE, sweep_id)
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={"started": seconds + micros / 1e6, "left": chunks})
    pipe.expire(key, max(60, int(SWEEP_TTL_FACTOR * settings.PROBE_INTERVAL_SECONDS)))
    # The sweep before this one: if its last chunk has not finished (a chunk expired unrun, or
    # the sweep outran the interval), its duration will never be observed: count it instead.
    pipe.getset(sweep_key(settings.AGENTCOM_NAMESPACE, "last"), sweep_id)
    previous = pipe.execute()[-1]
    if previous and client.hexists(sweep_key(settings.AGENTCOM_NAMESPACE, previous.decode()), "started"):
        tally.add(SWEEPS_UNFINISHED)


def sweep_chunk_done(sweep_id: str) -> float | None:
    """Note one chunk of a sweep done; the last one observes the sweep's duration (returned)."""
    key = sweep_key(settings.AGENTCOM_NAMESPACE, sweep_id)
    pipe = tally.redis().pipeline(transaction=False)
    pipe.hincrby(key, "left", -1)
    pipe.hget(key, "started")
    pipe.time()
    left, started, (seconds, micros) = pipe.execute()
    if started is None:  # the sweep was forgotten (expired): drop the key HINCRBY just made
        tally.redis().delete(key)
        return None
    if left != 0:
        return None  # other chunks still running
    tally.redis().delete(key)
    duration = max(0.0, seconds + micros / 1e6 - float(started))
    tally.observe(SWEEP_DURATION, [duration])
    return duration
