"""The one place that changes registry state; REST, admin, WebSocket, tasks all call here."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import lru_cache

from celery import current_app as current_celery_app
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from pydantic import ValidationError

from registry import ollama, signals
from registry.models import Endpoint, EndpointModel, Host, ResourceSnapshot, Token
from registry.rows import endpoint_row, resources_row
from registry.schemas import EndpointIn, SidecarReport
from registry.status import next_status

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
        if existing.host_id != host_obj.id:
            # The sidecar on the machine says which machine this Ollama runs on.
            Endpoint.objects.filter(id=existing.id).update(host=host_obj, revision=F("revision") + 1)
            signals.endpoints_changed.send(sender=Endpoint, ids=[existing.id])
            existing.refresh_from_db()
    return existing, False


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
    return endpoint.id


def remove_endpoints(ids: Iterable[int]) -> list[int]:
    """Remove several endpoints at once (admin bulk delete)."""
    ids = list(Endpoint.objects.filter(id__in=list(ids)).values_list("id", flat=True))
    with transaction.atomic():
        Endpoint.objects.filter(id__in=ids).delete()
        if ids:
            signals.endpoints_removed.send(sender=Endpoint, ids=ids)
    return ids


def _probe_soon(ids: list[int]) -> None:
    """Queue an immediate probe of new endpoints; a broker outage must not fail the registration."""
    if not settings.PROBE_ON_REGISTER:
        return
    try:
        queue_probe(ids)
    except Exception:
        logger.warning("could not queue a probe for endpoints %s", ids, exc_info=True)


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


def record_probe_results(results: list[ollama.ProbeResult], *, now: datetime | None = None) -> list[int]:
    """Store a batch of probe results, writing only what changed; return the changed ids.

    1. One bulk statement sets last_checked_at for the whole batch.
    2. Per endpoint, status/error/version/latency are written only when they changed, the
       status by compare-and-set so that a transition is reported exactly once.
    3. Model rows are synchronised only when the set of models or their details changed.
    """
    now = now or timezone.now()
    by_id = {r.id: r for r in results}
    changed: list[int] = []
    with transaction.atomic():
        Endpoint.objects.filter(id__in=list(by_id)).update(last_checked_at=now)
        try:
            with transaction.atomic():
                changed = [e.id for e in _with_models(by_id) if _record_one(e, by_id[e.id])]
        except Exception:
            # One endpoint's odd reply must not lose the batch: redo it, one savepoint each.
            changed = _record_each(by_id)
        if changed:
            signals.endpoints_changed.send(sender=Endpoint, ids=changed)
        signals.endpoints_checked.send(sender=Endpoint, ids=list(by_id), at=now)
    return changed


def _with_models(by_id: dict[int, ollama.ProbeResult]):
    return Endpoint.objects.filter(id__in=list(by_id)).prefetch_related("models")


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


def _apply_probe(endpoint: Endpoint, result: ollama.ProbeResult) -> bool:
    status, failures = next_status(
        endpoint.status, endpoint.consecutive_failures, result.ok, settings.UNHEALTHY_AFTER_FAILURES
    )
    fields = {"consecutive_failures": failures, "last_error": _text(result.error, 200)}
    if result.ok:
        fields["version"] = _text(result.version, 50)
    if _latency_moved(endpoint.latency_ms, result.latency_ms):
        fields["latency_ms"] = result.latency_ms
    fields = {k: v for k, v in fields.items() if getattr(endpoint, k) != v}
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
    # Ollama moves expires_at on every use of a loaded model; a small shift is not worth a write.
    if field == "expires_at" and old is not None and new is not None:
        return abs((new - old).total_seconds()) < 60
    return old == new


def _sync_models(endpoint: Endpoint, models: Iterable[ollama.ModelInfo]) -> bool:
    """Make the endpoint's model rows equal `models`; return whether anything changed."""
    current = {m.name: m for m in endpoint.models.all()}
    wanted = {_text(m.name, 200): m for m in models}
    fields = (
        "digest",
        "size",
        "family",
        "parameter_size",
        "quantization",
        "modified_at",
        "loaded",
        "size_vram",
        "expires_at",
    )
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
        elif any(not _same(f, getattr(row, f), values[f]) for f in fields):
            for f in fields:
                setattr(row, f, values[f])
            to_update.append(row)
    stale = [row.id for name, row in current.items() if name not in wanted]
    if stale:
        EndpointModel.objects.filter(id__in=stale).delete()
    if to_create:
        EndpointModel.objects.bulk_create(to_create)
    if to_update:
        EndpointModel.objects.bulk_update(to_update, fields)
    return bool(stale or to_create or to_update)


# --- sidecar reports -------------------------------------------------------------------


def parse_report(data: object) -> SidecarReport:
    try:
        return SidecarReport.model_validate(data)
    except ValidationError as exc:
        raise RegistryError("invalid_report", validation_message(exc)) from None


def record_report(report: SidecarReport, *, now: datetime | None = None) -> tuple[Host, Endpoint | None]:
    """Store a sidecar's resource report; register its Ollama (source auto) when it names one."""
    now = now or timezone.now()
    endpoint = None
    with transaction.atomic():
        target = report.ollama_host_port()
        if target is not None:
            endpoint, _ = register_endpoint(target[0], target[1], source=Endpoint.Source.AUTO, host=report.host)
        host, _ = Host.objects.get_or_create(name=report.host)
        snapshot = ResourceSnapshot.objects.create(
            host=host,
            cpu_percent=report.cpu_percent,
            ram_used_bytes=report.ram_used_bytes,
            ram_total_bytes=report.ram_total_bytes,
            vram_used_bytes=report.vram_used_bytes,
            vram_total_bytes=report.vram_total_bytes,
            gpus=[g.model_dump() for g in report.gpus],
            reported_at=now,
        )
        Host.objects.filter(id=host.id).update(latest_snapshot=snapshot, last_report_at=now, hostname=report.hostname)
        signals.resources_changed.send(sender=Host, hosts=[host.name])
    return host, endpoint


def prune_snapshots(*, now: datetime | None = None) -> int:
    """Delete resource history older than the retention window (latest per host is kept)."""
    now = now or timezone.now()
    cutoff = now - timedelta(hours=settings.RESOURCE_RETENTION_HOURS)
    keep = Host.objects.exclude(latest_snapshot=None).values("latest_snapshot_id")
    deleted, _ = ResourceSnapshot.objects.filter(reported_at__lt=cutoff).exclude(id__in=keep).delete()
    return deleted


# --- reading ---------------------------------------------------------------------------


def _endpoint_queryset():
    return Endpoint.objects.select_related("host").prefetch_related("models")


def endpoint_rows(ids: Iterable[int] | None = None) -> list[dict]:
    """Rows for the given endpoints (all when ids is None), in a fixed number of queries."""
    qs = _endpoint_queryset()
    if ids is not None:
        qs = qs.filter(id__in=list(ids))
    return [endpoint_row(e) for e in qs]


def host_resources(names: Iterable[str] | None = None, *, now: datetime | None = None) -> dict[str, dict | None]:
    """Latest resources per host name (None for a host that never reported)."""
    now = now or timezone.now()
    qs = Host.objects.select_related("latest_snapshot")
    if names is not None:
        names = list(names)
        qs = qs.filter(name__in=names)
    found = {h.name: resources_row(h, now) for h in qs}
    if names is None:
        return {name: row for name, row in found.items() if row is not None}
    return {name: found.get(name) for name in names}  # None tells a reader to drop the host


def fleet_models() -> dict[str, int]:
    """Model name -> number of distinct hosts holding it, most widespread first."""
    pairs = EndpointModel.objects.values_list("name", "endpoint__host_id").distinct()
    counts: dict[str, set[int]] = {}
    for name, host_id in pairs:
        counts.setdefault(name, set()).add(host_id)
    return dict(sorted(((n, len(h)) for n, h in counts.items()), key=lambda kv: (-kv[1], kv[0])))


def build_snapshot(*, now: datetime | None = None) -> dict:
    """The whole registry: endpoints, latest resources per host, fleet model summary (4 queries)."""
    now = now or timezone.now()
    return {
        "server_time": now.isoformat(),
        "stale_after_seconds": settings.STALE_AFTER_SECONDS,
        "endpoints": endpoint_rows(),
        "resources": host_resources(now=now),
        "fleet_models": fleet_models(),
    }


# --- tokens ----------------------------------------------------------------------------


def create_token(scope: str, label: str) -> tuple[Token, str]:
    """Create a token; the raw value is returned once and never stored."""
    if scope not in Token.Scope.values:
        raise RegistryError("invalid_scope", f"scope must be one of {', '.join(Token.Scope.values)}.")
    if not label.strip():
        raise RegistryError("invalid_label", "label is required.")
    raw = f"agc_{scope[:3]}_{secrets.token_urlsafe(32)}"
    token = Token.objects.create(scope=scope, label=label.strip()[:100], token_hash=Token.hash(raw), prefix=raw[:12])
    return token, raw


def authenticate_token(raw: str, *, now: datetime | None = None) -> Token | None:
    """Return the active token for `raw`, recording its use (at most once a minute)."""
    if not raw or len(raw) > 200:
        return None
    token = Token.objects.filter(token_hash=Token.hash(raw), revoked_at__isnull=True).first()
    if token is None:
        return None
    now = now or timezone.now()
    if token.last_used_at is None or now - token.last_used_at > timedelta(seconds=60):
        Token.objects.filter(id=token.id).update(last_used_at=now)
        token.last_used_at = now
    return token


def revoke_tokens(ids: Iterable[int], *, now: datetime | None = None) -> int:
    return Token.objects.filter(id__in=list(ids), revoked_at__isnull=True).update(revoked_at=now or timezone.now())
