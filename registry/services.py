"""The one place that changes registry state; REST, admin, WebSocket, tasks all call here."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from types import SimpleNamespace

from celery import current_app as current_celery_app
from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Count, F, Max, Q
from django.utils import timezone
from pydantic import ValidationError

from registry import ollama, signals
from registry.models import Endpoint, EndpointModel, Host, ResourceSnapshot, Token
from registry.rows import RESOURCE_FIELDS, filter_endpoints, ids_problems_first, resources_row
from registry.rows import endpoint_rows as _endpoint_rows
from registry.schemas import EndpointIn, SidecarReport, host_for_url, split_host
from registry.status import is_stale, next_status

logger = logging.getLogger(__name__)

PROBE_TASK = "registry.tasks.probe_endpoints"


class RegistryError(Exception):
    """A request the registry refuses, with a stable code and a sentence for people."""

    status_code = 400

    def __init__(self, code: str, detail: str, *, status_code: int | None = None):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code


class NotFound(RegistryError):
    status_code = 404


def validation_message(exc: ValidationError) -> str:
    """Turn pydantic's errors into one sentence naming the field."""
    parts = []
    for error in exc.errors()[:3]:
        field = ".".join(str(p) for p in error.get("loc", ()) if p != "__root__")
        message = error.get("msg", "is invalid").removeprefix("Value error, ")
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


@lru_cache(maxsize=4)
def _networks(text: str):
    return ollama.parse_networks(text)


def allowed_networks():
    return _networks(settings.REGISTRY_ALLOWED_NETWORKS)


# --- endpoints -------------------------------------------------------------------------


def parse_endpoint(address: object, port: object = None, name: object = "") -> EndpointIn:
    """Validate raw endpoint input (from any caller) or raise RegistryError."""
    try:
        return EndpointIn.model_validate({"host": address, "port": port, "name": name})
    except ValidationError as exc:
        raise RegistryError("invalid_endpoint", validation_message(exc)) from None


def _allowed_spec(address: object, port: object, name: object) -> EndpointIn:
    """Validate an endpoint's shape and refuse a literal address outside the allowed networks."""
    spec = parse_endpoint(address, port, name)
    refusal = ollama.literal_refusal(spec.address, allowed_networks())
    if refusal:
        raise RegistryError(
            "address_not_allowed",
            f"{spec.address} is outside REGISTRY_ALLOWED_NETWORKS ({refusal}); the hub will not probe it.",
        )
    return spec


def _already_registered(endpoint: Endpoint) -> RegistryError:
    return RegistryError(
        "already_registered", f"{endpoint.url} is already registered (endpoint {endpoint.id}).", status_code=409
    )


def check_registrable(address: object, port: object = None, name: object = "") -> EndpointIn:
    """Validate a manual registration before making it (the admin form shows the errors)."""
    spec = _allowed_spec(address, port, name)
    existing = Endpoint.objects.filter(address=spec.address, port=spec.port).first()
    if existing is not None:
        raise _already_registered(existing)
    return spec


def register_endpoint(
    address: object,
    port: object = None,
    name: object = "",
    *,
    source: str = Endpoint.Source.MANUAL,
    host: str | None = None,
) -> tuple[Endpoint, bool]:
    """Register the Ollama at address:port; return (endpoint, created). Manual duplicates are refused.

    `host` names the machine it runs on (from a sidecar's report); by default the address.
    """
    spec = _allowed_spec(address, port, name)
    with transaction.atomic():
        host_obj, _ = Host.objects.get_or_create(name=host or spec.address)
        existing = Endpoint.objects.filter(address=spec.address, port=spec.port).first()
        if existing is None:
            try:
                with transaction.atomic():
                    endpoint = Endpoint.objects.create(
                        host=host_obj, address=spec.address, port=spec.port, name=spec.name, source=source
                    )
            except IntegrityError:  # a concurrent registration won the race
                existing = Endpoint.objects.get(address=spec.address, port=spec.port)
            else:
                signals.endpoints_changed.send(sender=Endpoint, ids=[endpoint.id])
                transaction.on_commit(lambda: _probe_soon([endpoint.id]))
                return endpoint, True
        if source == Endpoint.Source.MANUAL:
            raise _already_registered(existing)
        if existing.host_id != host_obj.id and existing.source == Endpoint.Source.AUTO:
            # The sidecar on the machine says which machine this Ollama runs on; an operator's
            # own (manual) registration is never moved by a report.
            Endpoint.objects.filter(id=existing.id).update(host=host_obj, revision=F("revision") + 1)
            signals.endpoints_changed.send(sender=Endpoint, ids=[existing.id])
            existing.refresh_from_db()
    return existing, False


MAX_BULK_ENDPOINTS = 1000


def register_endpoints(entries: Sequence[tuple[object, object, object]]) -> list[int]:
    """Register many manual endpoints in one transaction, all or nothing; return their ids.

    Every entry is checked first (shape, allowed networks, duplicates in the list or in the
    registry); the first problem is reported with its position and nothing is registered.
    """
    if not entries:
        raise RegistryError("invalid_endpoint", "the list is empty; send at least one endpoint.")
    if len(entries) > MAX_BULK_ENDPOINTS:
        raise RegistryError("too_many", f"at most {MAX_BULK_ENDPOINTS} endpoints per request ({len(entries)} sent).")
    specs = []
    for index, entry in enumerate(entries):
        try:
            specs.append(_allowed_spec(*entry))
        except RegistryError as exc:
            raise RegistryError(exc.code, f"entry {index}: {exc.detail}", status_code=exc.status_code) from None
    seen: dict[tuple[str, int], int] = {}
    for index, spec in enumerate(specs):
        key = (spec.address, spec.port)
        if key in seen:
            raise RegistryError("duplicate", f"entries {seen[key]} and {index} are both {_url(*key)}.")
        seen[key] = index
    with transaction.atomic():
        taken = Endpoint.objects.filter(address__in={a for a, _ in seen}).values_list("address", "port", "id")
        for address, port, endpoint_id in taken:
            if (address, port) in seen:
                raise RegistryError(
                    "already_registered",
                    f"entry {seen[(address, port)]}: {_url(address, port)} is already registered "
                    f"(endpoint {endpoint_id}).",
                    status_code=409,
                )
        Host.objects.bulk_create([Host(name=a) for a in {s.address for s in specs}], ignore_conflicts=True)
        hosts = dict(Host.objects.filter(name__in={s.address for s in specs}).values_list("name", "id"))
        created = Endpoint.objects.bulk_create(
            [Endpoint(host_id=hosts[s.address], address=s.address, port=s.port, name=s.name) for s in specs]
        )
        ids = [e.id for e in created]  # SQLite and PostgreSQL both return ids from a bulk insert
        signals.endpoints_changed.send(sender=Endpoint, ids=ids)
        transaction.on_commit(lambda: _probe_soon(ids))
    return ids


def _url(address: str, port: int) -> str:
    return f"http://{host_for_url(address)}:{port}"


def update_endpoint(endpoint_id: int, *, port: object = None, name: object = None) -> Endpoint:
    """Change an endpoint's port or display name."""
    endpoint = get_endpoint(endpoint_id)
    spec = parse_endpoint(
        endpoint.address, endpoint.port if port is None else port, endpoint.name if name is None else name
    )
    changed = {k: v for k, v in (("port", spec.port), ("name", spec.name)) if getattr(endpoint, k) != v}
    if not changed:
        return endpoint
    with transaction.atomic():
        if "port" in changed and Endpoint.objects.filter(address=endpoint.address, port=spec.port).exists():
            raise RegistryError(
                "already_registered",
                f"port {spec.port} is already registered on {endpoint.address}.",
                status_code=409,
            )
        Endpoint.objects.filter(id=endpoint.id).update(**changed, revision=F("revision") + 1)
        signals.endpoints_changed.send(sender=Endpoint, ids=[endpoint.id])
    endpoint.refresh_from_db()
    return endpoint


def get_endpoint(endpoint_id: object) -> Endpoint:
    """Return the endpoint or raise NotFound."""
    if isinstance(endpoint_id, bool) or not isinstance(endpoint_id, int):
        try:
            endpoint_id = int(str(endpoint_id))
        except ValueError:
            raise RegistryError("invalid_id", "id must be a whole number.") from None
    endpoint = Endpoint.objects.select_related("host").filter(id=endpoint_id).first()
    if endpoint is None:
        raise NotFound("not_found", f"endpoint {endpoint_id} does not exist.")
    return endpoint


def remove_endpoint(endpoint_id: object) -> int:
    """Remove an endpoint (and its model rows); return its id."""
    endpoint = get_endpoint(endpoint_id)
    with transaction.atomic():
        deleted, _ = Endpoint.objects.filter(id=endpoint.id).delete()
        if deleted:
            signals.endpoints_removed.send(sender=Endpoint, ids=[endpoint.id])
    _advertised.clear()
    return endpoint.id


def remove_endpoints(ids: Iterable[int]) -> list[int]:
    """Remove several endpoints at once (admin bulk delete)."""
    ids = list(Endpoint.objects.filter(id__in=list(ids)).values_list("id", flat=True))
    with transaction.atomic():
        Endpoint.objects.filter(id__in=ids).delete()
        if ids:
            signals.endpoints_removed.send(sender=Endpoint, ids=ids)
    _advertised.clear()
    return ids


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
    rows = Endpoint.objects.filter(probe_claim=claim).values_list("id", "address", "port")
    return claim, [ollama.ProbeTarget(id=i, address=a, port=p) for i, a, p in rows]


def release_claim(claim: str) -> None:
    Endpoint.objects.filter(probe_claim=claim).update(probe_claim="", probe_claimed_until=None)


def probe(ids: Iterable[int] | None) -> list[int]:
    """Lease, probe and record endpoints (all when ids is None); return the changed ids."""
    claim, targets = claim_for_probe(ids)
    try:
        if not targets:
            return []
        results = ollama.probe_many_sync(targets, timeout=settings.PROBE_TIMEOUT_SECONDS, allowed=allowed_networks())
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
    if unchanged:
        _retrying(_mark_checked, unchanged, quiet, now)
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


def _mark_checked(ids: list[int], quiet: dict[int, tuple[int | None, int]], now: datetime) -> None:
    """Set last_checked_at of `ids` in one statement, and the latency and failure count that
    moved without a visible change (`quiet`: id -> (latency_ms, consecutive_failures)) in one
    executemany: under load latencies jump on many endpoints at once."""
    with transaction.atomic():
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
    only when the set of models or their details changed.
    """
    changed: list[int] = []
    with transaction.atomic():
        Endpoint.objects.filter(id__in=list(by_id)).update(last_checked_at=now)
        try:
            with transaction.atomic():
                changed = [e.id for e in _with_models(by_id) if _record_one(e, by_id[e.id])]
        except OperationalError:
            raise  # the database itself is busy: the caller tries the batch again
        except Exception:
            # One endpoint's odd reply must not lose the batch: redo it, one savepoint each.
            changed = _record_each(by_id)
        if changed:
            signals.endpoints_changed.send(sender=Endpoint, ids=changed)
        signals.endpoints_checked.send(sender=Endpoint, ids=list(by_id), at=now)
    return changed


def _with_models(by_id: dict[int, ollama.ProbeResult]):
    if not by_id:
        return []
    return Endpoint.objects.filter(id__in=list(by_id)).prefetch_related("models")


def _planned_change(endpoint: Endpoint, result: ollama.ProbeResult) -> tuple[str, tuple | None]:
    """What recording `result` would write (read-only): "none"; "quiet" with (latency_ms,
    consecutive_failures) when only those moved; or "visible"."""
    status, fields = _probe_fields(endpoint, result)
    if status != endpoint.status or set(fields) - {"latency_ms", "consecutive_failures"}:
        return "visible", None
    if result.ok and any(_model_plan(endpoint, result.models)):
        return "visible", None
    if not fields:
        return "none", None
    return "quiet", (
        fields.get("latency_ms", endpoint.latency_ms),
        fields.get("consecutive_failures", endpoint.consecutive_failures),
    )


def _record_each(by_id: dict[int, ollama.ProbeResult]) -> list[int]:
    changed = []
    for endpoint in _with_models(by_id):  # fresh objects: the failed attempt changed some in memory
        try:
            with transaction.atomic():
                if _record_one(endpoint, by_id[endpoint.id]):
                    changed.append(endpoint.id)
        except Exception:
            logger.exception("could not record the probe of endpoint %s", endpoint.id)
    return changed


def _record_one(endpoint: Endpoint, result: ollama.ProbeResult) -> bool:
    visible = _apply_probe(endpoint, result)  # bumps the revision itself when visible
    if result.ok and _sync_models(endpoint, result.models):
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


def _apply_probe(endpoint: Endpoint, result: ollama.ProbeResult) -> bool:
    status, fields = _probe_fields(endpoint, result)
    visible = status != endpoint.status or bool(set(fields) - {"consecutive_failures", "latency_ms"})
    bump = {"revision": F("revision") + 1} if visible else {}
    if status != endpoint.status:
        # Compare-and-set: only the run that sees the old status reports the transition.
        won = Endpoint.objects.filter(id=endpoint.id, status=endpoint.status).update(status=status, **fields, **bump)
        return bool(won)
    if fields:
        Endpoint.objects.filter(id=endpoint.id).update(**fields, **bump)
    return visible


def _same(field: str, old, new) -> bool:
    # Ollama moves expires_at on every use of a loaded model (now + keep-alive, 5 min by
    # default): rewriting and republishing every loaded model each minute costs a fleet more
    # than the news is worth, so a shift counts only once it is as large as the keep-alive.
    if field == "expires_at" and old is not None and new is not None:
        return abs((new - old).total_seconds()) < EXPIRES_AT_SLACK_SECONDS
    return old == new


EXPIRES_AT_SLACK_SECONDS = 300

_MODEL_FIELDS = EndpointModel.DETAIL_FIELDS


def _sync_models(endpoint: Endpoint, models: Iterable[ollama.ModelInfo]) -> bool:
    """Make the endpoint's model rows equal `models`; return whether anything changed."""
    to_create, to_update, stale = _model_plan(endpoint, models)
    if stale:
        EndpointModel.objects.filter(id__in=stale).delete()
    if to_create:
        EndpointModel.objects.bulk_create(to_create)
    if to_update:
        EndpointModel.objects.bulk_update(to_update, _MODEL_FIELDS)
    return bool(stale or to_create or to_update)


def _model_plan(endpoint: Endpoint, models: Iterable[ollama.ModelInfo]) -> tuple[list, list, list]:
    """(rows to create, rows to update, ids to delete) to make the model rows equal `models`."""
    current = {m.name: m for m in endpoint.models.all()}
    wanted = {_text(m.name, 200): m for m in models}
    to_create, to_update = [], []
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
        elif any(not _same(f, getattr(row, f), values[f]) for f in _MODEL_FIELDS):
            for f in _MODEL_FIELDS:
                setattr(row, f, values[f])
            to_update.append(row)
    stale = [row.id for name, row in current.items() if name not in wanted]
    return to_create, to_update, stale


# --- sidecar reports -------------------------------------------------------------------


def parse_report(
    data: object, token: TokenInfo | None = None, peer: str | None = None, *, resolve: bool = True
) -> SidecarReport:
    """Validate a report body, then `check_report` it (for `token`, sent from `peer`)."""
    try:
        report = SidecarReport.model_validate(data)
    except ValidationError as exc:
        raise RegistryError("invalid_report", validation_message(exc)) from None
    check_report(report, token, peer, resolve=resolve)
    return report


def check_report(
    report: SidecarReport, token: TokenInfo | None = None, peer: str | None = None, *, resolve: bool = True
) -> None:
    """Refuse (before anything is stored) a report the hub must not take.

    Any token: the advertised Ollama must be inside REGISTRY_ALLOWED_NETWORKS. A sidecar token
    also reports only for the host it is bound to, and advertises only an Ollama on the machine
    the report comes from (`peer`, the client address as the hub sees it): otherwise a sidecar
    token could make the hub probe any port anywhere, or overwrite another host.
    """
    target = report.ollama_host_port()
    if target is not None:
        _check_advertised(*target, settings.REGISTRY_ALLOWED_NETWORKS)
    if token is None or token.scope != Token.Scope.SIDECAR:
        return
    if token.host and token.host != report.host:
        raise RegistryError(
            "wrong_host",
            f"this sidecar token reports for host {token.host!r} only, not {report.host!r}.",
            status_code=403,
        )
    if target is None:
        return
    here = same_machine(target[0], peer, resolve=resolve)
    if here is None:
        raise RegistryError("lookup_needed", f"{target[0]} must be resolved first.")
    if not here:
        raise RegistryError(
            "not_this_machine",
            f"ollama_url {report.ollama_url} is not on the machine sending the report ({peer or 'unknown'}); "
            "a sidecar may only advertise its own Ollama.",
            status_code=403,
        )


def same_machine(address: str, peer: str | None, *, resolve: bool) -> bool | None:
    """Whether `address` (an IP or a name) is the machine at `peer`; None when a name would need
    resolving and `resolve` is false. Every loopback address is this hub's own machine."""
    try:
        peer_ip = _plain_ip(ipaddress.ip_address(peer or ""))
    except ValueError:
        return False
    try:
        candidates = [_plain_ip(ipaddress.ip_address(address))]
    except ValueError:
        cached = _resolved_cache.get(address)
        if cached is not None and cached[0] >= time.monotonic():
            candidates = cached[1]
        elif resolve:
            candidates = _resolved(address)
        else:
            return None
    return any(ip == peer_ip or (ip.is_loopback and peer_ip.is_loopback) for ip in candidates)


def _plain_ip(ip):
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


_resolved_cache: dict[str, tuple[float, list]] = {}


def _resolved(name: str) -> list:
    """The addresses `name` resolves to (cached 60 s; reports from one host repeat every few seconds)."""
    cached = _resolved_cache.get(name)
    if cached and cached[0] >= time.monotonic():
        return cached[1]
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        found = [_plain_ip(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos]
    except (OSError, ValueError):
        found = []
    if len(_resolved_cache) > 10_000:
        _resolved_cache.clear()
    _resolved_cache[name] = (time.monotonic() + 60, found)
    return found


def client_address(peer: str | None, forwarded_for: str | None) -> str | None:
    """The reporting machine's address: the TCP peer, or, when the peer is a trusted proxy
    (REGISTRY_TRUSTED_PROXIES), the last address in X-Forwarded-For that is not one."""
    trusted = trusted_proxies()
    if not peer or not trusted or not forwarded_for or not _in(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _in(hop, trusted):
            return hop
    return peer


def _in(address: str, networks) -> bool:
    try:
        ip = _plain_ip(ipaddress.ip_address(address))
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def trusted_proxies():
    return _networks(settings.REGISTRY_TRUSTED_PROXIES) if settings.REGISTRY_TRUSTED_PROXIES else ()


def bind_token(token: TokenInfo, host: str) -> TokenInfo:
    """Bind a sidecar token that is not bound yet to `host` (its first report); return it bound."""
    if token.scope != Token.Scope.SIDECAR or token.host:
        return token
    Token.objects.filter(id=token.id, host="").update(host=host)
    bound = Token.objects.filter(id=token.id).values_list("host", flat=True).first() or host
    token = TokenInfo(token.id, token.scope, token.label, bound)
    for digest, cached in list(_token_cache.items()):
        if cached is not None and cached.id == token.id:
            _token_cache[digest] = token
    return token


@lru_cache(maxsize=4096)  # every report of a host names the same Ollama
def _check_advertised(address: str, port: int, networks: str) -> None:
    _allowed_spec(address, port, "")


def record_report(report: SidecarReport, *, now: datetime | None = None) -> int | None:
    """Store one sidecar report; return the id of its Ollama endpoint (None without one)."""
    return record_reports([report], now=now)[0]


def record_reports(
    reports: Sequence[SidecarReport], *, token_ids: Iterable[int] = (), now: datetime | None = None
) -> list[int | None]:
    """Store a batch of checked reports in one transaction; return each one's endpoint id.

    1. Per host the last report of the batch wins; its values become the host's latest, exactly.
    2. A history row is written at most once per RESOURCE_HISTORY_SECONDS per host.
    3. Dashboards are told only about hosts whose shown values changed (rounded as the page
       shows them), plus a heartbeat every STALE_AFTER_SECONDS / 3 so no page thinks it stale.
    4. An advertised Ollama is registered (source auto) when it is not yet known.
    """
    now = now or timezone.now()
    latest: dict[str, SidecarReport] = {}
    for report in reports:
        latest.pop(report.host, None)  # keep arrival order: re-insert at the end
        latest[report.host] = report
    with transaction.atomic():
        hosts = _hosts_named(latest)
        announced, history = [], []
        for name, report in latest.items():
            host = hosts[name]
            if _worth_announcing(host, report, now):
                host.announced_at = now
                announced.append(name)
            _apply_report(host, report, now)
            if host.history_at is None or (now - host.history_at).total_seconds() >= settings.RESOURCE_HISTORY_SECONDS:
                host.history_at = now
                history.append(_history_row(host, now))
        _update_hosts(hosts[name] for name in latest)
        if history:
            ResourceSnapshot.objects.bulk_create(history)
        endpoint_ids = _register_advertised(latest, hosts)
        for token_id in token_ids:
            note_token_use(token_id, now=now)
        if announced:
            signals.resources_changed.send(sender=Host, hosts=announced)
    return [endpoint_ids.get(report.host) for report in reports]


_HOST_REPORT_FIELDS = ["hostname", "last_report_at", *Host.RESOURCE_FIELDS, "announced_at", "history_at"]


_HOST_DATETIMES = ("last_report_at", "announced_at", "history_at")


class _HostState(SimpleNamespace):
    """A host's report columns as plain values (no model instance: this runs per report)."""


def _update_hosts(hosts: Iterable[_HostState]) -> None:
    """One UPDATE statement run for many rows (Django's bulk_update builds CASE expressions
    that cost ~8 ms of CPU per row; executemany costs a few microseconds)."""
    quote, ops = connection.ops.quote_name, connection.ops
    columns = [Host._meta.get_field(name).column for name in _HOST_REPORT_FIELDS]
    sql = "UPDATE {} SET {} WHERE id = %s".format(
        quote(Host._meta.db_table), ", ".join(f"{quote(c)} = %s" for c in columns)
    )

    def value(host: _HostState, name: str):
        raw = getattr(host, name)
        if name in _HOST_DATETIMES:
            return ops.adapt_datetimefield_value(raw)
        return ops.adapt_json_value(raw, None) if name == "gpus" else raw

    rows = [[value(h, name) for name in _HOST_REPORT_FIELDS] + [h.id] for h in hosts]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _hosts_named(reports: dict[str, SidecarReport]) -> dict[str, _HostState]:
    def read(names) -> dict[str, _HostState]:
        rows = Host.objects.filter(name__in=list(names)).values("id", "name", *_HOST_REPORT_FIELDS)
        return {row["name"]: _HostState(**row) for row in rows}

    hosts = read(reports)
    missing = [name for name in reports if name not in hosts]
    if missing:
        Host.objects.bulk_create([Host(name=name) for name in missing], ignore_conflicts=True)
        hosts.update(read(missing))
    return hosts


def _percent(used: int | None, total: int | None) -> int | None:
    return None if used is None or not total else round(100 * used / total)


def _shown(host: _HostState | SidecarReport, gpus: list[dict]) -> tuple:
    """What the page shows of a host's resources: whole percents, totals, GPU names."""
    return (
        host.hostname,
        None if host.cpu_percent is None else round(host.cpu_percent),
        _percent(host.ram_used_bytes, host.ram_total_bytes),
        host.ram_total_bytes,
        _percent(host.vram_used_bytes, host.vram_total_bytes),
        host.vram_total_bytes,
        tuple(
            (
                g.get("index"),
                g.get("name"),
                _percent(g.get("memory_used_bytes"), g.get("memory_total_bytes")),
                g.get("memory_total_bytes"),
                None if g.get("utilization_percent") is None else round(g["utilization_percent"]),
            )
            for g in gpus
        ),
    )


def _worth_announcing(host: _HostState, report: SidecarReport, now: datetime) -> bool:
    if host.last_report_at is None or host.announced_at is None:
        return True
    if is_stale(host.last_report_at, now, settings.STALE_AFTER_SECONDS):
        return True  # back from silence
    if (now - host.announced_at).total_seconds() >= settings.STALE_AFTER_SECONDS / 3:
        return True  # heartbeat: pages judge staleness from reported_at
    return _shown(host, host.gpus or []) != _shown(report, [g.model_dump() for g in report.gpus])


def _apply_report(host: _HostState, report: SidecarReport, now: datetime) -> None:
    host.hostname = report.hostname
    host.last_report_at = now
    host.cpu_percent = report.cpu_percent
    host.ram_used_bytes = report.ram_used_bytes
    host.ram_total_bytes = report.ram_total_bytes
    host.vram_used_bytes = report.vram_used_bytes
    host.vram_total_bytes = report.vram_total_bytes
    host.gpus = [g.model_dump() for g in report.gpus]


def _history_row(host: _HostState, now: datetime) -> ResourceSnapshot:
    return ResourceSnapshot(
        host_id=host.id,
        cpu_percent=host.cpu_percent,
        ram_used_bytes=host.ram_used_bytes,
        ram_total_bytes=host.ram_total_bytes,
        vram_used_bytes=host.vram_used_bytes,
        vram_total_bytes=host.vram_total_bytes,
        gpus=host.gpus,
        reported_at=now,
    )


def _register_advertised(reports: dict[str, SidecarReport], hosts: dict[str, _HostState]) -> dict[str, int]:
    """Register (source auto, in bulk) the Ollama each report advertises; return host -> endpoint id.

    An auto endpoint follows the machine its sidecar names; a manual one is never moved.
    """
    targets = {name: r.ollama_host_port() for name, r in reports.items() if r.ollama_url}
    settled: dict[str, int] = {}
    now = time.monotonic()
    for name, target in list(targets.items()):
        cached = _advertised.get((*target, hosts[name].id))
        if cached is not None and cached[1] > now:
            settled[name] = cached[0]
            del targets[name]
    if not targets:
        return settled

    def known() -> dict[tuple[str, int], tuple[int, int, str]]:
        rows = Endpoint.objects.filter(address__in={address for address, _ in targets.values()})
        return {
            (a, p): (i, h, src) for i, a, p, h, src in rows.values_list("id", "address", "port", "host_id", "source")
        }

    found = known()
    new = [(name, address, port) for name, (address, port) in targets.items() if (address, port) not in found]
    if new:
        Endpoint.objects.bulk_create(
            [Endpoint(host_id=hosts[n].id, address=a, port=p, source=Endpoint.Source.AUTO) for n, a, p in new],
            ignore_conflicts=True,  # a concurrent registration of the same address won the race
        )
        found = known()
    created = [found[(a, p)][0] for _, a, p in new if (a, p) in found]
    moved = [
        found[target][0]
        for name, target in targets.items()
        if target in found and found[target][1] != hosts[name].id and found[target][2] == Endpoint.Source.AUTO
    ]
    for endpoint_id in moved:
        host_id = next(hosts[n].id for n, t in targets.items() if found[t][0] == endpoint_id)
        Endpoint.objects.filter(id=endpoint_id).update(host_id=host_id, revision=F("revision") + 1)
    if created or moved:
        signals.endpoints_changed.send(sender=Endpoint, ids=created + moved)
    if created:
        transaction.on_commit(lambda: _probe_soon(created))
    for name, target in targets.items():
        if target in found:
            settled[name] = found[target][0]
            # Known and on its machine (or manual): the next reports skip this lookup a while.
            transaction.on_commit(lambda key=(*target, hosts[name].id), i=settled[name]: _remember(key, i))
    return settled


# (address, port, host id) -> (endpoint id, until when): a host's sidecar names the same Ollama in
# every report; looking it up again each time cost more than the rest of the report. Removing an
# endpoint forgets it here; other processes re-register a removed auto endpoint within this time.
_advertised: dict[tuple[str, int, int], tuple[int, float]] = {}
ADVERTISED_CACHE_SECONDS = 10.0


def _remember(key: tuple[str, int, int], endpoint_id: int) -> None:
    if len(_advertised) > 100_000:
        _advertised.clear()
    _advertised[key] = (endpoint_id, time.monotonic() + ADVERTISED_CACHE_SECONDS)


def prune_snapshots(*, now: datetime | None = None) -> int:
    """Delete resource history older than the retention window (hosts keep their latest values)."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.RESOURCE_RETENTION_HOURS)
    deleted, _ = ResourceSnapshot.objects.filter(reported_at__lt=cutoff).delete()
    return deleted


# --- reading ---------------------------------------------------------------------------


def endpoint_rows(ids: Iterable[int] | None = None) -> list[dict]:
    """Rows for the given endpoints (all when ids is None), in a fixed number of queries."""
    return _endpoint_rows(ids)


@dataclass(frozen=True, slots=True)
class EndpointQuery:
    """Which endpoints a reader wants: filters (each optional) and a page."""

    status: str = ""
    model: str = ""
    q: str = ""
    offset: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.status and self.status not in Endpoint.Status.values:
            raise RegistryError("invalid_input", f"status must be one of {', '.join(Endpoint.Status.values)}.")
        if self.offset < 0 or (self.limit is not None and not 1 <= self.limit <= MAX_PAGE):
            raise RegistryError("invalid_input", f"offset must be 0 or more and limit from 1 to {MAX_PAGE}.")

    @property
    def everything(self) -> bool:
        return self == EndpointQuery()


MAX_PAGE = 5000


def find_endpoints(query: EndpointQuery) -> tuple[list[dict], int]:
    """(rows of one page of the endpoints matching the filters, how many match in all)."""
    if query.everything:
        rows = _endpoint_rows()
        return rows, len(rows)
    matching = filter_endpoints(Endpoint.objects.all(), status=query.status, model=query.model, q=query.q)
    total = matching.count()
    end = None if query.limit is None else query.offset + query.limit
    return _endpoint_rows(endpoints=matching.order_by("address", "port")[query.offset : end]), total


def host_resources(names: Iterable[str] | None = None, *, now: datetime | None = None) -> dict[str, dict | None]:
    """Latest resources per host name (None for a host that never reported), in one query."""
    now = now or timezone.now()
    qs = Host.objects.filter(last_report_at__isnull=False)
    if names is not None:
        names = list(names)
        qs = qs.filter(name__in=names)
    found = {values["name"]: resources_row(values, now) for values in qs.values(*RESOURCE_FIELDS)}
    if names is None:
        return found
    return {name: found.get(name) for name in names}  # None tells a reader to drop the host


def fleet_summary() -> tuple[dict[str, int], dict[str, int]]:
    """(model name -> hosts holding it, model name -> hosts where it is loaded), most widespread
    first, counting only endpoints that answer: a host that is down serves no model. One query."""
    counted = (
        EndpointModel.objects.filter(endpoint__status=Endpoint.Status.HEALTHY)
        .values("name")
        .annotate(
            hosts=Count("endpoint__host_id", distinct=True),
            loaded_on=Count("endpoint__host_id", distinct=True, filter=Q(loaded=True)),
        )
        .values_list("name", "hosts", "loaded_on")
    )
    ranked = sorted(counted, key=lambda c: (-c[1], c[0]))
    return {name: hosts for name, hosts, _ in ranked}, {name: n for name, _, n in ranked if n}


def fleet_models() -> dict[str, int]:
    """Model name -> number of distinct reachable hosts holding it, most widespread first."""
    return fleet_summary()[0]


def build_snapshot(*, now: datetime | None = None, query: EndpointQuery | None = None) -> dict:
    """The registry (or the page of it `query` asks for): endpoints, latest resources per host,
    fleet model summary, in a fixed number of queries. A filtered snapshot carries the
    resources of its endpoints' hosts only."""
    now = now or timezone.now()
    query = query or EndpointQuery()
    rows, total = find_endpoints(query)
    held, loaded = fleet_summary()
    hosts = None if query.everything else {row["host"] for row in rows}
    resources = (
        host_resources(hosts, now=now)
        if hosts is None
        else {name: res for name, res in host_resources(hosts, now=now).items() if res is not None}
    )
    return {
        "server_time": now.isoformat(),
        "stale_after_seconds": settings.STALE_AFTER_SECONDS,
        "total": total,
        "endpoints": rows,
        "resources": resources,
        "fleet_models": held,
        "fleet_loaded": loaded,
    }


def snapshot_in_order(first: int) -> tuple[dict, list[int]]:
    """The dashboard's opening: a snapshot of the first `first` endpoints in the dashboard's
    order (problems first, natural host order), with `total` the whole count, and the ids of
    the rest in that order (snapshot_rest reads them). Quick whatever the fleet size, so the
    first screen paints before the rest is read."""
    now = timezone.now()
    order = ids_problems_first()
    head = order[:first]
    by_id = {row["id"]: row for row in _endpoint_rows(head)}
    rows = [by_id[i] for i in head if i in by_id]
    held, loaded = fleet_summary()
    # All of it fits: every host's resources too (also those of hosts with no endpoint).
    resources = host_resources({row["host"] for row in rows} if order[first:] else None, now=now)
    snapshot = {
        "server_time": now.isoformat(),
        "stale_after_seconds": settings.STALE_AFTER_SECONDS,
        "total": len(order),
        "endpoints": rows,
        "resources": {name: res for name, res in resources.items() if res is not None},
        "fleet_models": held,
        "fleet_loaded": loaded,
    }
    return snapshot, order[first:]


def snapshot_rest(ids: list[int], sent_hosts: Iterable[str]) -> dict:
    """The rows of `ids` in that order, and the resources of every host not in `sent_hosts`."""
    by_id = {row["id"]: row for row in _endpoint_rows(ids)} if ids else {}
    sent = set(sent_hosts)
    resources = {name: res for name, res in host_resources().items() if name not in sent}
    return {"endpoints": [by_id[i] for i in ids if i in by_id], "resources": resources}


# --- tokens ----------------------------------------------------------------------------


def create_token(scope: str, label: str, *, host: str = "") -> tuple[Token, str]:
    """Create a token (a sidecar token optionally bound to `host`); the raw value is returned once."""
    if scope not in Token.Scope.values:
        raise RegistryError("invalid_scope", f"scope must be one of {', '.join(Token.Scope.values)}.")
    if not label.strip():
        raise RegistryError("invalid_label", "label is required.")
    if host:
        if scope != Token.Scope.SIDECAR:
            raise RegistryError("invalid_host", "only sidecar tokens are bound to a host.")
        try:
            host = split_host(host)[0]
        except ValueError as exc:
            raise RegistryError("invalid_host", str(exc)) from None
    raw = f"agc_{scope[:3]}_{secrets.token_urlsafe(32)}"
    token = Token.objects.create(
        scope=scope, label=label.strip()[:100], token_hash=Token.hash(raw), prefix=raw[:12], host=host
    )
    return token, raw


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a request needs to know of its token (cached in memory, never the raw value)."""

    id: int
    scope: str
    label: str
    host: str = ""  # the machine a sidecar token is bound to ("" until its first report)


# Tokens are cached per process: a report every 10 s from each of 1,000 sidecars must not
# cost a database lookup each. A revocation reaches every process within TOKEN_CACHE_SECONDS:
# that often one cheap query compares the revocation mark with the one seen before.
_token_cache: dict[str, TokenInfo | None] = {}
_token_used: dict[int, float] = {}  # token id -> when its last_used_at was last written (monotonic)
_token_mark: dict[str, object] = {"checked": -math.inf, "revoked": None}
_TOKEN_CACHE_MAX = 10_000


def token_cache_fresh() -> bool:
    """Whether the cache was checked against revocations within TOKEN_CACHE_SECONDS."""
    return time.monotonic() - _token_mark["checked"] < settings.TOKEN_CACHE_SECONDS


def refresh_token_cache() -> None:
    """Drop the cache if any token was revoked (or created) since the last check."""
    mark = Token.objects.aggregate(n=Count("id"), revoked=Count("revoked_at"), last=Max("revoked_at"))
    if mark != _token_mark["revoked"]:
        _token_cache.clear()
        _token_mark["revoked"] = mark
    _token_mark["checked"] = time.monotonic()


def cached_token(raw: str) -> tuple[bool, TokenInfo | None]:
    """(hit, token) from this process's cache, without touching the database."""
    if not raw or len(raw) > 200:
        return True, None
    if not token_cache_fresh():
        return False, None
    digest = Token.hash(raw)
    return (True, _token_cache[digest]) if digest in _token_cache else (False, None)


def authenticate_token(raw: str, *, record_use: bool = True, now: datetime | None = None) -> TokenInfo | None:
    """Return the active token for `raw` (cached, see TOKEN_CACHE_SECONDS), recording its use."""
    if not raw or len(raw) > 200:
        return None
    if not token_cache_fresh():
        refresh_token_cache()
    digest = Token.hash(raw)
    if digest in _token_cache:
        info = _token_cache[digest]
    else:
        row = (
            Token.objects.filter(token_hash=digest, revoked_at__isnull=True)
            .values("id", "scope", "label", "host")
            .first()
        )
        info = TokenInfo(**row) if row else None
        if len(_token_cache) >= _TOKEN_CACHE_MAX:
            _token_cache.clear()  # a flood of made-up tokens must not grow memory
        _token_cache[digest] = info
    if info is not None and record_use:
        note_token_use(info.id, now=now)
    return info


def note_token_use(token_id: int, *, now: datetime | None = None) -> None:
    """Record that a token was used (written at most once a minute per token and process)."""
    if time.monotonic() - _token_used.get(token_id, -math.inf) < 60:
        return
    _token_used[token_id] = time.monotonic()
    Token.objects.filter(id=token_id).update(last_used_at=now or timezone.now())


def revoke_tokens(ids: Iterable[int], *, now: datetime | None = None) -> int:
    """Revoke tokens: at once in this process, within TOKEN_CACHE_SECONDS in the others."""
    count = Token.objects.filter(id__in=list(ids), revoked_at__isnull=True).update(revoked_at=now or timezone.now())
    forget_cached_tokens()
    return count


def forget_process_caches() -> None:
    """Drop what this process remembers of the database (tests: ids repeat between tests)."""
    forget_cached_tokens()
    _advertised.clear()


def forget_cached_tokens() -> None:
    """Drop this process's token cache (after a revocation; between tests)."""
    _token_cache.clear()
    _token_used.clear()
    _token_mark.update(checked=-math.inf, revoked=None)
