"""Probing endpoints and recording what the probes found."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from celery import current_app as current_celery_app
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from registry import metrics, ollama, signals
from registry.models import Endpoint, EndpointModel, Event
from registry.services.common import PROBE_TASK, allowed_networks
from registry.services.events import endpoint_event, record_events, status_event
from registry.services.history import add_latency_samples
from registry.status import next_status

logger = logging.getLogger(__name__)


class _ProbeSoon:
    """Coalesce probe-on-register requests: one task per PROBE_CHUNK_SIZE ids per 0.2 s, not
    one per registration (1,000 endpoints provisioned at once are a handful of tasks)."""

    DELAY_SECONDS = 0.2

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: set[int] = set()
        self.timer: threading.Timer | None = None

    def add(self, ids: Iterable[int]) -> None:
        with self.lock:
            self.ids.update(ids)
            if self.timer is None:
                self.timer = threading.Timer(self.DELAY_SECONDS, self.flush)
                self.timer.daemon = True
                self.timer.start()

    def flush(self) -> None:
        with self.lock:
            ids, self.ids, self.timer = sorted(self.ids), set(), None
        size = settings.PROBE_CHUNK_SIZE
        for start in range(0, len(ids), size):
            try:
                queue_probe(ids[start : start + size])
            except Exception:  # a broker outage must not fail registrations; the sweep probes later
                logger.warning("could not queue a probe for %d new endpoints", len(ids), exc_info=True)


_probe_soon_batcher = _ProbeSoon()
os.register_at_fork(after_in_child=_probe_soon_batcher.__init__)


def _probe_soon(ids: list[int]) -> None:
    """Probe new endpoints soon (PROBE_ON_REGISTER), after their registration commits."""
    if settings.PROBE_ON_REGISTER:
        _probe_soon_batcher.add(ids)


def queue_probe(ids: list[int]) -> None:
    """Ask a Celery worker to probe these endpoints now (expires at the next sweep)."""
    # By name: services never import the tasks module (tasks import services).
    current_celery_app.send_task(PROBE_TASK, args=[list(ids)], expires=settings.PROBE_INTERVAL_SECONDS)


# --- probing ---------------------------------------------------------------------------


def sweep_chunks() -> list[list[int]]:
    """The fleet's endpoint ids cut into PROBE_CHUNK_SIZE chunks, one probe task each."""
    ids = list(Endpoint.objects.order_by("id").values_list("id", flat=True))
    size = settings.PROBE_CHUNK_SIZE
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def sweep_plan() -> list[tuple[float, list[int]]]:
    """The next sweep as (delay in seconds, endpoint ids) per chunk: chunk k starts k gaps after
    the first, the gaps spreading the chunks over PROBE_SPREAD_FRACTION of the interval. Every
    endpoint is still probed once per interval, at the same offset each time."""
    chunks = sweep_chunks()
    span = settings.PROBE_INTERVAL_SECONDS * settings.PROBE_SPREAD_FRACTION
    gap = span / len(chunks) if chunks else 0.0
    return [(round(k * gap, 3), chunk) for k, chunk in enumerate(chunks)]


def claim_for_probe(
    ids: Iterable[int] | None = None, *, now: datetime | None = None
) -> tuple[str, list[ollama.ProbeTarget]]:
    """Lease endpoints for one probe run; endpoints leased by another run are skipped."""
    now = now or timezone.now()
    claim = secrets.token_hex(8)
    until = now + timedelta(seconds=settings.PROBE_TIMEOUT_SECONDS * 2 + 5)
    free = Endpoint.objects.filter(probe_claimed_until__isnull=True) | Endpoint.objects.filter(
        probe_claimed_until__lt=now
    )
    if ids is not None:
        free = free.filter(id__in=list(ids))
    free.update(probe_claim=claim, probe_claimed_until=until)
    rows = Endpoint.objects.filter(probe_claim=claim).values_list("id", "address", "port", "scheme", "authorization")
    return claim, [ollama.ProbeTarget(*row) for row in rows]


def release_claim(claim: str) -> None:
    Endpoint.objects.filter(probe_claim=claim).update(probe_claim="", probe_claimed_until=None)


def probe(ids: Iterable[int] | None) -> list[int]:
    """Lease, probe and record endpoints (all when ids is None); return the changed ids."""
    claim, targets = claim_for_probe(ids)
    try:
        if not targets:
            return []
        results = ollama.probe_many_sync(
            targets,
            timeout=settings.PROBE_TIMEOUT_SECONDS,
            allowed=allowed_networks(),
            ca_bundle=settings.PROBE_CA_BUNDLE,
        )
        metrics.probes_done(results)  # in memory; sent to Redis by the flusher thread
        return record_probe_results(results)
    finally:
        release_claim(claim)


RECORD_BATCH = 50  # endpoints per transaction: a sweep never holds SQLite's write lock for long
RECORD_ATTEMPTS = 3


def record_probe_results(results: list[ollama.ProbeResult], *, now: datetime | None = None) -> list[int]:
    """Store probe results, writing only what changed; return the changed ids.

    1. Compare before taking the write lock (readers never wait on SQLite in WAL mode).
    2. The endpoints whose probe changed nothing (the steady state: nearly all) get their
       last_checked_at in ONE short statement: few, brief write transactions per sweep.
    3. The others are written RECORD_BATCH at a time, each batch in its own transaction.
    A batch that meets a busy database (another writer past the busy timeout) is tried again:
    a probe run never fails as a whole because someone else was writing.
    """
    now = now or timezone.now()
    by_id = {r.id: r for r in results}
    differing, quiet = [], {}
    for endpoint in _with_models(by_id):
        kind, values = _planned_change(endpoint, by_id[endpoint.id])
        if kind == "visible":
            differing.append(endpoint.id)
        elif kind == "quiet":
            quiet[endpoint.id] = values
    unchanged = [i for i in by_id if i not in set(differing)]
    if results:
        _retrying(_mark_checked, unchanged, quiet, now, results)
    changed: list[int] = []
    for start in range(0, len(differing), RECORD_BATCH):
        batch = {i: by_id[i] for i in differing[start : start + RECORD_BATCH]}
        changed += _retrying(_record_batch, batch, now)
    return changed


def _retrying(write, *args):
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            return write(*args)
        except OperationalError:
            if attempt == RECORD_ATTEMPTS:
                raise
            logger.warning("database busy recording probe results; trying again")
            time.sleep(0.5 * attempt)


def _mark_checked(
    ids: list[int], quiet: dict[int, tuple[int | None, int]], now: datetime, results: list[ollama.ProbeResult]
) -> None:
    """Set last_checked_at of `ids` in one statement, and the latency and failure count that
    moved without a visible change (`quiet`: id -> (latency_ms, consecutive_failures)) in one
    executemany: under load latencies jump on many endpoints at once. The chunk's latencies are
    kept for history as one compact row (no row per probe)."""
    with transaction.atomic():
        add_latency_samples(results, now)
        if not ids:
            return
        Endpoint.objects.filter(id__in=ids).update(last_checked_at=now)
        if quiet:
            quote = connection.ops.quote_name
            sql = "UPDATE {} SET {} = %s, {} = %s WHERE id = %s".format(
                quote(Endpoint._meta.db_table), quote("latency_ms"), quote("consecutive_failures")
            )
            with connection.cursor() as cursor:
                cursor.executemany(sql, [[latency, failures, i] for i, (latency, failures) in quiet.items()])
        signals.endpoints_checked.send(sender=Endpoint, ids=ids, at=now)


def _record_batch(by_id: dict[int, ollama.ProbeResult], now: datetime) -> list[int]:
    """Write the probes that change something.

    Status/error/version/latency are written only when they changed, the status by
    compare-and-set so that a transition is reported exactly once; model rows are synchronised
    only when the set of models or their details changed. The events of the visible changes
    (status, models added, removed, loaded, unloaded) are recorded in the same transaction.
    """
    changed: list[int] = []
    events: list[Event] = []
    with transaction.atomic():
        Endpoint.objects.filter(id__in=list(by_id)).update(last_checked_at=now)
        try:
            with transaction.atomic():
                changed = [e.id for e in _for_recording(by_id) if _record_one(e, by_id[e.id], now, events)]
        except OperationalError:
            raise  # the database itself is busy: the caller tries the batch again
        except Exception:
            # One endpoint's odd reply must not lose the batch: redo it, one savepoint each.
            events = []
            changed = _record_each(by_id, now, events)
        if changed:
            signals.endpoints_changed.send(sender=Endpoint, ids=changed)
        record_events(events)
        signals.endpoints_checked.send(sender=Endpoint, ids=list(by_id), at=now)
    return changed


def _with_models(by_id: dict[int, ollama.ProbeResult]):
    if not by_id:
        return []
    return Endpoint.objects.filter(id__in=list(by_id)).prefetch_related("models")


def _for_recording(by_id: dict[int, ollama.ProbeResult]):
    """The endpoints to write, with their models and machine (events name it): the visible path only."""
    return _with_models(by_id).select_related("host") if by_id else []


def _planned_change(endpoint: Endpoint, result: ollama.ProbeResult) -> tuple[str, tuple | None]:
    """What recording `result` would write (read-only): "none"; "quiet" with (latency_ms,
    consecutive_failures) when only those moved; or "visible"."""
    status, fields = _probe_fields(endpoint, result)
    if status != endpoint.status or set(fields) - {"latency_ms", "consecutive_failures"}:
        return "visible", None
    if result.ok and any(_model_plan(endpoint, result.models)[:3]):
        return "visible", None
    if not fields:
        return "none", None
    return "quiet", (
        fields.get("latency_ms", endpoint.latency_ms),
        fields.get("consecutive_failures", endpoint.consecutive_failures),
    )


def _record_each(by_id: dict[int, ollama.ProbeResult], now: datetime, events: list[Event]) -> list[int]:
    changed = []
    for endpoint in _for_recording(by_id):  # fresh objects: the failed attempt changed some in memory
        mine: list[Event] = []
        try:
            with transaction.atomic():
                if _record_one(endpoint, by_id[endpoint.id], now, mine):
                    changed.append(endpoint.id)
        except Exception:
            logger.exception("could not record the probe of endpoint %s", endpoint.id)
        else:
            events += mine
    return changed


def _record_one(endpoint: Endpoint, result: ollama.ProbeResult, now: datetime, events: list[Event]) -> bool:
    """Write one endpoint's probe; append the events of what visibly changed to `events`."""
    old_status = endpoint.status
    visible, new_status = _apply_probe(endpoint, result)  # bumps the revision itself when visible
    host = endpoint.host.name
    if new_status is not None:
        reason = _text(result.error, 200) if new_status == Endpoint.Status.UNHEALTHY else ""
        events.append(status_event(endpoint, old_status, new_status, reason, host=host, at=now))
    if result.ok:
        models_changed, news = _sync_models(endpoint, result.models)
        events += [endpoint_event(kind, endpoint, host=host, at=now, model=name) for kind, name in news]
        if models_changed:
            if not visible:
                Endpoint.objects.filter(id=endpoint.id).update(revision=F("revision") + 1)
            visible = True
    return visible


def _text(value: str, limit: int) -> str:
    """Text from an Ollama reply as the database can store it (PostgreSQL refuses NUL)."""
    return value.replace("\x00", "")[:limit]


def _latency_moved(old: int | None, new: int | None) -> bool:
    """Latency jitters on every probe; store it only when it moved a lot (not a visible change)."""
    if old is None or new is None:
        return old != new
    return abs(new - old) > max(50, old)


def _probe_fields(endpoint: Endpoint, result: ollama.ProbeResult) -> tuple[str, dict]:
    """The endpoint's next status and the columns the probe changes (nothing written)."""
    status, failures = next_status(
        endpoint.status, endpoint.consecutive_failures, result.ok, settings.UNHEALTHY_AFTER_FAILURES
    )
    fields = {"consecutive_failures": failures, "last_error": _text(result.error, 200)}
    if result.ok:
        fields["version"] = _text(result.version, 50)
    if _latency_moved(endpoint.latency_ms, result.latency_ms):
        fields["latency_ms"] = result.latency_ms
    return status, {k: v for k, v in fields.items() if getattr(endpoint, k) != v}


def _apply_probe(endpoint: Endpoint, result: ollama.ProbeResult) -> tuple[bool, str | None]:
    """Write the probe's columns; return (visible change, the new status when it changed)."""
    status, fields = _probe_fields(endpoint, result)
    visible = status != endpoint.status or bool(set(fields) - {"consecutive_failures", "latency_ms"})
    bump = {"revision": F("revision") + 1} if visible else {}
    if status != endpoint.status:
        # Compare-and-set: only the run that sees the old status reports the transition.
        won = Endpoint.objects.filter(id=endpoint.id, status=endpoint.status).update(status=status, **fields, **bump)
        return bool(won), status if won else None
    if fields:
        Endpoint.objects.filter(id=endpoint.id).update(**fields, **bump)
    return visible, None


def _same(field: str, old, new) -> bool:
    # Ollama moves expires_at on every use of a loaded model (now + keep-alive, 5 min by
    # default): rewriting and republishing every loaded model each minute costs a fleet more
    # than the news is worth, so a shift counts only once it is as large as the keep-alive.
    if field == "expires_at" and old is not None and new is not None:
        return abs((new - old).total_seconds()) < EXPIRES_AT_SLACK_SECONDS
    return old == new


EXPIRES_AT_SLACK_SECONDS = 300

_MODEL_FIELDS = EndpointModel.DETAIL_FIELDS


def _sync_models(endpoint: Endpoint, models: Iterable[ollama.ModelInfo]) -> tuple[bool, list[tuple[str, str]]]:
    """Make the endpoint's model rows equal `models`; return (whether anything changed, the
    (event kind, model name) pairs people would notice)."""
    to_create, to_update, stale, news = _model_plan(endpoint, models)
    if stale:
        EndpointModel.objects.filter(id__in=stale).delete()
    if to_create:
        EndpointModel.objects.bulk_create(to_create)
    if to_update:
        EndpointModel.objects.bulk_update(to_update, _MODEL_FIELDS)
    return bool(stale or to_create or to_update), news


def _model_plan(endpoint: Endpoint, models: Iterable[ollama.ModelInfo]) -> tuple[list, list, list, list]:
    """(rows to create, rows to update, ids to delete, (event kind, name) pairs) to make the model
    rows equal `models`. The pairs: models added or removed, and loaded or unloaded."""
    current = {m.name: m for m in endpoint.models.all()}
    wanted = {_text(m.name, 200): m for m in models}
    to_create, to_update = [], []
    news: list[tuple[str, str]] = []
    for name, info in wanted.items():
        values = {
            "digest": _text(info.digest, 100),
            "size": info.size,
            "family": _text(info.family, 100),
            "parameter_size": _text(info.parameter_size, 50),
            "quantization": _text(info.quantization, 50),
            "modified_at": info.modified_at,
            "loaded": info.loaded,
            "size_vram": info.size_vram,
            "expires_at": info.expires_at,
        }
        row = current.get(name)
        if row is None:
            to_create.append(EndpointModel(endpoint=endpoint, name=name, **values))
            news.append((Event.Kind.MODEL_ADDED, name))
            if info.loaded:
                news.append((Event.Kind.MODEL_LOADED, name))
        elif any(not _same(f, getattr(row, f), values[f]) for f in _MODEL_FIELDS):
            if row.loaded != info.loaded:
                news.append((Event.Kind.MODEL_LOADED if info.loaded else Event.Kind.MODEL_UNLOADED, name))
            for f in _MODEL_FIELDS:
                setattr(row, f, values[f])
            to_update.append(row)
    stale = [row.id for name, row in current.items() if name not in wanted]
    news += [(Event.Kind.MODEL_REMOVED, name) for name, row in current.items() if name not in wanted]
    return to_create, to_update, stale, news
