"""Registering, renaming and removing endpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from django.db import IntegrityError, transaction
from django.db.models import F
from pydantic import ValidationError

from registry import ollama, signals
from registry.models import Endpoint, Event, Host
from registry.schemas import EndpointIn, host_for_url
from registry.services.common import NotFound, RegistryError, allowed_networks, validation_message
from registry.services.events import endpoint_event, record_events
from registry.services.probing import _probe_soon

logger = logging.getLogger(__name__)


def parse_endpoint(address: object, port: object = None, name: object = "", authorization: object = None) -> EndpointIn:
    """Validate raw endpoint input (from any caller) or raise RegistryError."""
    try:
        return EndpointIn.model_validate({"host": address, "port": port, "name": name, "authorization": authorization})
    except ValidationError as exc:
        raise RegistryError("invalid_endpoint", validation_message(exc)) from None


def _scheme(spec: EndpointIn, scheme: object) -> str:
    """The scheme to probe with: the URL's (like its port, it wins), else `scheme`, else http."""
    if spec.scheme:
        return spec.scheme
    if scheme in (None, ""):
        return Endpoint.Scheme.HTTP
    if scheme not in Endpoint.Scheme.values:
        raise RegistryError("invalid_endpoint", "scheme must be http or https.")
    return str(scheme)


def _allowed_spec(
    address: object, port: object, name: object, scheme: object = None, authorization: object = None
) -> tuple[EndpointIn, str]:
    """Validate an endpoint's shape and refuse a literal address outside the allowed networks;
    return it with the scheme to probe it with."""
    spec = parse_endpoint(address, port, name, authorization)
    chosen = _scheme(spec, scheme)
    refusal = ollama.literal_refusal(spec.address, allowed_networks())
    if refusal:
        raise RegistryError(
            "address_not_allowed",
            f"{spec.address} is outside REGISTRY_ALLOWED_NETWORKS ({refusal}); the hub will not probe it.",
        )
    return spec, chosen


def _already_registered(endpoint: Endpoint) -> RegistryError:
    return RegistryError(
        "already_registered", f"{endpoint.url} is already registered (endpoint {endpoint.id}).", status_code=409
    )


def check_registrable(
    address: object, port: object = None, name: object = "", *, scheme: object = None, authorization: object = None
) -> EndpointIn:
    """Validate a manual registration before making it (the admin form shows the errors)."""
    spec, _ = _allowed_spec(address, port, name, scheme, authorization)
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
    by: str = "",
    scheme: object = None,
    authorization: object = None,
) -> tuple[Endpoint, bool]:
    """Register the Ollama at address:port; return (endpoint, created). Manual duplicates are refused.

    `host` names the machine it runs on (from a sidecar's report); by default the address.
    `by` says who asked (for the registered event): "admin token 'ci'", "user alice", ...
    `address` may be a URL: https:// (or `scheme="https"`) probes it over TLS. `authorization`
    is an Authorization header value sent with its probes (write-only: rows show has_auth).
    """
    spec, scheme = _allowed_spec(address, port, name, scheme, authorization)
    with transaction.atomic():
        host_obj, _ = Host.objects.get_or_create(name=host or spec.address)
        existing = Endpoint.objects.filter(address=spec.address, port=spec.port).first()
        if existing is None:
            try:
                with transaction.atomic():
                    endpoint = Endpoint.objects.create(
                        host=host_obj,
                        address=spec.address,
                        port=spec.port,
                        scheme=scheme,
                        authorization=spec.authorization_value or "",
                        name=spec.name,
                        source=source,
                    )
            except IntegrityError:  # a concurrent registration won the race
                existing = Endpoint.objects.get(address=spec.address, port=spec.port)
            else:
                signals.endpoints_changed.send(sender=Endpoint, ids=[endpoint.id])
                record_events([endpoint_event(Event.Kind.REGISTERED, endpoint, host=host_obj.name, by=by)])
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


def register_endpoints(entries: Sequence[tuple[object, ...]], *, by: str = "") -> list[int]:
    """Register many manual endpoints in one transaction, all or nothing; return their ids.

    Each entry is (address, port, name[, scheme[, authorization]]), as register_endpoint takes them.

    Every entry is checked first (shape, allowed networks, duplicates in the list or in the
    registry); the first problem is reported with its position and nothing is registered.
    """
    if not entries:
        raise RegistryError("invalid_endpoint", "the list is empty; send at least one endpoint.")
    if len(entries) > MAX_BULK_ENDPOINTS:
        raise RegistryError("too_many", f"at most {MAX_BULK_ENDPOINTS} endpoints per request ({len(entries)} sent).")
    specs: list[tuple[EndpointIn, str]] = []
    for index, entry in enumerate(entries):
        try:
            specs.append(_allowed_spec(*entry))
        except RegistryError as exc:
            raise RegistryError(exc.code, f"entry {index}: {exc.detail}", status_code=exc.status_code) from None
    seen: dict[tuple[str, int], int] = {}
    for index, (spec, _) in enumerate(specs):
        key = (spec.address, spec.port)
        if key in seen:
            raise RegistryError("duplicate", f"entries {seen[key]} and {index} are both {_url(*key)}.")
        seen[key] = index
    with transaction.atomic():
        taken = Endpoint.objects.filter(address__in={a for a, _ in seen}).values_list("address", "port", "scheme", "id")
        for address, port, scheme, endpoint_id in taken:
            if (address, port) in seen:
                raise RegistryError(
                    "already_registered",
                    f"entry {seen[(address, port)]}: {Endpoint.url_for(address, port, scheme)} is already "
                    f"registered (endpoint {endpoint_id}).",
                    status_code=409,
                )
        names = {spec.address for spec, _ in specs}
        Host.objects.bulk_create([Host(name=a) for a in names], ignore_conflicts=True)
        hosts = dict(Host.objects.filter(name__in=names).values_list("name", "id"))
        created = Endpoint.objects.bulk_create(
            [
                Endpoint(
                    host_id=hosts[s.address],
                    address=s.address,
                    port=s.port,
                    scheme=scheme,
                    authorization=s.authorization_value or "",
                    name=s.name,
                )
                for s, scheme in specs
            ]
        )
        ids = [e.id for e in created]  # SQLite and PostgreSQL both return ids from a bulk insert
        signals.endpoints_changed.send(sender=Endpoint, ids=ids)
        record_events(endpoint_event(Event.Kind.REGISTERED, e, host=e.address, by=by) for e in created)
        transaction.on_commit(lambda: _probe_soon(ids))
    return ids


def _url(address: str, port: int) -> str:
    return f"{host_for_url(address)}:{port}"


def update_endpoint(
    endpoint_id: int,
    *,
    port: object = None,
    name: object = None,
    scheme: object = None,
    authorization: object = None,
    by: str = "",
) -> Endpoint:
    """Change an endpoint's port, display name, scheme or Authorization header (None keeps each;
    an empty authorization removes the header). The change is an event (`changed`, naming the
    fields, never the header's value); a new port, scheme or header is probed at once."""
    endpoint = get_endpoint(endpoint_id)
    spec = parse_endpoint(
        endpoint.address,
        endpoint.port if port is None else port,
        endpoint.name if name is None else name,
        authorization,
    )
    wanted = {"port": spec.port, "name": spec.name, "scheme": _scheme(spec, scheme or endpoint.scheme)}
    if spec.authorization is not None:
        wanted["authorization"] = spec.authorization_value
    changed = {k: v for k, v in wanted.items() if getattr(endpoint, k) != v}
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
        fields = {k: [getattr(endpoint, k), v] for k, v in changed.items() if k != "authorization"}
        if "authorization" in changed:
            fields["authorization"] = "removed" if not changed["authorization"] else "set"
        record_events([endpoint_event(Event.Kind.CHANGED, endpoint, host=endpoint.host.name, by=by, fields=fields)])
        signals.endpoints_changed.send(sender=Endpoint, ids=[endpoint.id])
        if changed.keys() - {"name"}:
            transaction.on_commit(lambda: _probe_soon([endpoint.id]))
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


def remove_endpoint(endpoint_id: object, *, by: str = "") -> int:
    """Remove an endpoint (and its model rows); return its id. `by` says who (for the event)."""
    endpoint = get_endpoint(endpoint_id)
    with transaction.atomic():
        deleted, _ = Endpoint.objects.filter(id=endpoint.id).delete()
        if deleted:
            signals.endpoints_removed.send(sender=Endpoint, ids=[endpoint.id])
            record_events([endpoint_event(Event.Kind.REMOVED, endpoint, host=endpoint.host.name, by=by)])
    _advertised.clear()
    return endpoint.id


def remove_endpoints(ids: Iterable[int], *, by: str = "") -> list[int]:
    """Remove several endpoints at once (admin bulk delete)."""
    with transaction.atomic():
        gone = list(Endpoint.objects.filter(id__in=list(ids)).select_related("host"))
        ids = [e.id for e in gone]
        Endpoint.objects.filter(id__in=ids).delete()
        if ids:
            signals.endpoints_removed.send(sender=Endpoint, ids=ids)
            record_events(endpoint_event(Event.Kind.REMOVED, e, host=e.host.name, by=by) for e in gone)
    _advertised.clear()
    return ids


# (address, port, host id, scheme) -> (endpoint id, until when): a host's sidecar names the same Ollama in
# every report; looking it up again each time cost more than the rest of the report. Removing an
# endpoint forgets it here; other processes re-register a removed auto endpoint within this time.
_advertised: dict[tuple[str, int, int, str], tuple[int, float]] = {}
ADVERTISED_CACHE_SECONDS = 10.0


def _remember(key: tuple[str, int, int, str], endpoint_id: int) -> None:
    if len(_advertised) > 100_000:
        _advertised.clear()
    _advertised[key] = (endpoint_id, time.monotonic() + ADVERTISED_CACHE_SECONDS)
