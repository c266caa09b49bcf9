"""REST API (/api/v1): thin views over registry.services, OpenAPI from django-ninja."""

from __future__ import annotations

import logging
import re
from datetime import datetime
from typing import Annotated, Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from ninja import Body, NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth
from pydantic import BeforeValidator

from registry import ingest, metrics, services
from registry.models import Event, Token
from registry.schemas import NAME_PATTERN, EndpointsIn, SidecarReport
from registry.wire import (
    EndpointHistory,
    EndpointRow,
    ErrorBody,
    EventPage,
    HostHistory,
    HostsHistory,
    Route,
    RouteNotFound,
    RouteUnavailable,
    Snapshot,
)

logger = logging.getLogger(__name__)


class TokenAuth(HttpBearer):
    """`Authorization: Bearer <token>`; a token of another scope is refused with 403."""

    def __init__(self, *scopes: str):
        super().__init__()
        self.scopes = scopes

    def __call__(self, request: HttpRequest) -> Any:
        if "HTTP_AUTHORIZATION" in request.META and not request.META["HTTP_AUTHORIZATION"].startswith("Bearer "):
            raise AuthenticationError(401, "Authorization header must be 'Bearer <token>'.")
        return super().__call__(request)

    def authenticate(self, request: HttpRequest, token: str) -> services.TokenInfo | None:
        found = services.authenticate_token(token)
        if found is None:
            raise AuthenticationError(401, "token is wrong or revoked.")
        if found.scope not in self.scopes:
            raise HttpError(403, f"a {found.scope} token may not use this route.")
        request.auth_token = found
        return found


class StaffSession(SessionAuth):
    """A logged-in staff user (CSRF-checked on unsafe methods); a logged-in user who is not
    staff is known but not allowed: 403, not 401 (logging in again would not help)."""

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = request.user
        if not user.is_authenticated:
            return None
        if not user.is_staff:
            raise HttpError(403, "your account may read the fleet but not manage it (it is not staff).")
        return user


class UserSession(SessionAuth):
    """Any logged-in user (read-only routes)."""


admin_auth = [TokenAuth(Token.Scope.ADMIN), StaffSession()]
# Reading the fleet: admin and agent tokens, any logged-in user (the dashboard).
read_auth = [TokenAuth(Token.Scope.ADMIN, Token.Scope.AGENT), UserSession()]
api = NinjaAPI(
    title="AgentCom LLM Registry",
    version="1",
    description="Register Ollama endpoints, read the fleet, receive sidecar reports.",
    urls_namespace="api-v1",
    docs_url="/docs",
    openapi_url="/openapi.json",
)


def _error(request, code: str, detail: str, status: int):
    if request.path == ingest.REPORT_PATH:
        metrics.report_refused(code)
    return api.create_response(request, {"error": code, "detail": detail}, status=status)  # wire.ErrorBody


@api.exception_handler(services.RegistryError)
def _registry_error(request, exc: services.RegistryError):
    return _error(request, exc.code, exc.detail, exc.status_code)


@api.exception_handler(services.ModelNotHeld)
def _model_not_held(request, exc: services.ModelNotHeld):
    body = {"error": exc.code, "detail": exc.detail, "models": exc.models}  # wire.RouteNotFound
    return api.create_response(request, body, status=404)


@api.exception_handler(services.NoHealthyHolder)
def _no_healthy_holder(request, exc: services.NoHealthyHolder):
    body = {"error": exc.code, "detail": exc.detail, "holders": exc.holders}  # wire.RouteUnavailable
    response = api.create_response(request, body, status=503)
    response["Retry-After"] = str(round(settings.PROBE_INTERVAL_SECONDS))  # a probe may bring one back
    return response


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    parts = []
    for err in exc.errors[:3]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "payload", "path", "query", "one", "many")]
        msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            return _error(request, "invalid_json", "the request body is not valid JSON.", 400)
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    # A body the OpenAPI description allows that breaks a rule between its fields (a report's used
    # over total): a code of its own, so a client can tell it from a body the description refuses.
    consistent = any(err.get("type") != "inconsistent_report" for err in exc.errors)
    code = "invalid_input" if consistent or not exc.errors else "inconsistent_report"
    return _error(request, code, "; ".join(parts) or "the request is invalid.", 400)


@api.exception_handler(AuthenticationError)
def _auth_error(request, exc: AuthenticationError):
    detail = (
        exc.message if exc.message != "Unauthorized" else "log in as staff or send 'Authorization: Bearer <token>'."
    )
    response = _error(request, "unauthorized", detail, 401)
    response["WWW-Authenticate"] = 'Bearer realm="agentcom"'
    return response


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    if exc.status_code == 400 and "parse" in str(exc).lower():
        return _error(request, "invalid_json", "the request body is not valid JSON.", 400)
    code = {400: "bad_request", 403: "forbidden", 404: "not_found", 413: "too_large"}.get(exc.status_code, "error")
    return _error(request, code, str(exc), exc.status_code)


@api.exception_handler(RequestDataTooBig)
def _too_big(request, exc):
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // 1024
    return _error(request, "too_large", f"the request body is larger than {limit} KiB.", 413)


@api.exception_handler(OperationalError)
def _database_busy(request, exc: OperationalError):
    # SQLite's "database is locked" after the busy timeout, a PostgreSQL connection lost, ...
    logger.warning("database unavailable for %s %s: %s", request.method, request.path, exc)
    response = _error(request, "overloaded", "the database is busy or unreachable; retry later.", 503)
    response["Retry-After"] = str(ingest.RETRY_AFTER_SECONDS)
    return response


@api.exception_handler(Exception)
def _unexpected(request, exc: Exception):
    logger.exception("unexpected error in %s %s", request.method, request.path)
    return _error(request, "internal_error", "the hub failed to handle this request; see its log.", 500)


def _require_perm(request: HttpRequest, perm: str) -> None:
    """Session users need the Django permission; admin tokens may do everything."""
    if getattr(request, "auth_token", None) is None and not request.user.has_perm(perm):
        raise HttpError(403, f"your account lacks the permission {perm}.")


def _by(request: HttpRequest) -> str:
    """Who is asking, as events name them: "admin token 'ci'" or "user alice"."""
    token = getattr(request, "auth_token", None)
    if token is not None:
        return f"{token.scope} token '{token.label}'"
    return f"user {request.user.get_username()}"


def errors(*statuses: int) -> dict[int, type[ErrorBody]]:
    """The error statuses a route can answer, each with the `{"error", "detail"}` body."""
    return dict.fromkeys(statuses, ErrorBody)


class ReportOut(Schema):
    host: str
    endpoint_id: int | None


# Any route: 400 a request Django refuses before the route (a Host not in DJANGO_ALLOWED_HOSTS);
# 401 no, wrong or revoked credentials; 403 a sidecar token, or a session without the permission;
# 503 the database busy or unreachable (with Retry-After).
ANY_ROUTE = (400, 401, 403, 503)
ERRORS = errors(400, 401, 403, 404, 409, 413)


def _send(request, data, status: int = 200, headers: dict | None = None):
    # Rows are plain dicts already in wire shape; the tests validate them against registry.wire,
    # so a response is not rebuilt as thousands of pydantic objects per request, and orjson
    # writes a snapshot of 1,000 endpoints ~10x faster than the json module.
    return HttpResponse(orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def _query(status: str, model: str, q: str, offset: int, limit: int | None) -> services.EndpointQuery:
    return services.EndpointQuery(status=status.strip(), model=model.strip(), q=q.strip(), offset=offset, limit=limit)


# The filters and paging both read routes take (each optional).
# Their constraints are published in the OpenAPI description and enforced before the route runs.
STATUS_Q = Query(
    "",
    pattern="^(unknown|healthy|unhealthy)?$",
    description="only endpoints with this status: unknown, healthy or unhealthy",
)
MODEL_Q = Query(
    "", pattern=NAME_PATTERN, description='only endpoints holding this model ("llama3" also matches "llama3:8b")'
)
TEXT_Q = Query(
    "",
    pattern=NAME_PATTERN,
    description="only endpoints whose host, address, name or a model's name contains this text",
)
OFFSET_Q = Query(0, ge=0, le=2**63 - 1, description="skip this many matching endpoints (ordered by address, port)")
LIMIT_Q = Query(
    None,
    ge=1,
    le=services.MAX_PAGE,
    description=f"at most this many endpoints (1 to {services.MAX_PAGE}); all when absent",
)


@api.get(
    "/endpoints",
    auth=admin_auth,
    response={200: list[EndpointRow], **errors(*ANY_ROUTE)},
    tags=["endpoints"],
)
def list_endpoints(
    request, status: str = STATUS_Q, model: str = MODEL_Q, q: str = TEXT_Q, offset: int = OFFSET_Q,
    limit: int | None = LIMIT_Q,
):  # fmt: skip
    """List the registered endpoints with their status and models (all, or those matching the
    filters, a page at a time); the header X-Total-Count says how many match in all."""
    rows, total = services.find_endpoints(_query(status, model, q, offset, limit))
    return _send(request, rows, headers={"X-Total-Count": str(total)})


@api.post(
    "/endpoints",
    auth=admin_auth,
    response={201: EndpointRow | list[EndpointRow], **errors(*ANY_ROUTE, 409, 413)},
    tags=["endpoints"],
)
def create_endpoint(request, payload: Body[EndpointsIn]):
    """Register an Ollama endpoint (host or URL, port, optional name), or a list of up to 1,000
    at once (all or nothing: one bad or duplicate entry registers none); probed at once. A host
    given as https://... is probed over TLS; `authorization` (write-only) is sent with its probes."""
    _require_perm(request, "registry.add_endpoint")
    if isinstance(payload, list):
        ids = services.register_endpoints(
            [(p.address, p.port, p.name, p.scheme, p.authorization_value) for p in payload], by=_by(request)
        )
        return _send(request, services.endpoint_rows(ids), 201)
    endpoint, _ = services.register_endpoint(
        payload.address,
        payload.port,
        payload.name,
        by=_by(request),
        scheme=payload.scheme,
        authorization=payload.authorization_value,
    )
    return _send(request, services.endpoint_rows([endpoint.id])[0], 201)


@api.get(
    "/endpoints/{endpoint_id}",
    auth=admin_auth,
    response={200: EndpointRow, **errors(*ANY_ROUTE, 404)},
    tags=["endpoints"],
)
def get_endpoint(request, endpoint_id: int):
    """Read one endpoint."""
    services.get_endpoint(endpoint_id)
    return _send(request, services.endpoint_rows([endpoint_id])[0])


@api.delete(
    "/endpoints/{endpoint_id}",
    auth=admin_auth,
    response={204: None, **errors(*ANY_ROUTE, 404)},
    tags=["endpoints"],
)
def delete_endpoint(request, endpoint_id: int):
    """Remove an endpoint and its models."""
    _require_perm(request, "registry.delete_endpoint")
    services.remove_endpoint(endpoint_id, by=_by(request))
    return Status(204, None)


@api.get(
    "/snapshot",
    auth=read_auth,
    response={200: Snapshot, **errors(*ANY_ROUTE)},
    tags=["fleet"],
)
def snapshot(
    request, status: str = STATUS_Q, model: str = MODEL_Q, q: str = TEXT_Q, offset: int = OFFSET_Q,
    limit: int | None = LIMIT_Q,
):  # fmt: skip
    """The registry: endpoints (all, or a filtered page: `total` says how many match), latest
    resources per host (of the rows' hosts when filtered), fleet model summary."""
    return _send(request, services.build_snapshot(query=_query(status, model, q, offset, limit)))


def _iso_only(value: object) -> object:
    # pydantic would read "0.5" as seconds since 1970: a time must be written as a date.
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("must be an ISO 8601 time, e.g. 2026-11-27T12:00:00Z")
    return value


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
IsoTime = Annotated[datetime, BeforeValidator(_iso_only)]

# The filters and paging of GET /events (each optional).
EVENT_ENDPOINT_Q = Query(None, ge=1, le=2**63 - 1, description="only the events of this endpoint id")
EVENT_HOST_Q = Query("", max_length=253, pattern=NAME_PATTERN, description="only the events of this machine")
EVENT_KIND_Q = Query("", pattern=f"^({'|'.join(Event.Kind.values)})?$", description="only events of this kind")
EVENT_SINCE_Q = Query(None, description="only events at or after this time (ISO 8601; UTC when naive)")
EVENT_CURSOR_Q = Query("", pattern=r"^(\d{1,16}-\d{1,18})?$", description="the `next` of the page before")
EVENT_LIMIT_Q = Query(100, ge=1, le=services.MAX_EVENTS_PAGE, description="events per page (newest first)")
EVENT_WITH_HOST_Q = Query(False, description="with endpoint: also its machine's sidecar silent and back events")


@api.get(
    "/events",
    auth=[TokenAuth(Token.Scope.ADMIN), UserSession()],
    response={200: EventPage, **errors(*ANY_ROUTE)},
    tags=["fleet"],
)
def events(
    request, endpoint: int | None = EVENT_ENDPOINT_Q, host: str = EVENT_HOST_Q, kind: str = EVENT_KIND_Q,
    since: IsoTime | None = EVENT_SINCE_Q, cursor: str = EVENT_CURSOR_Q, limit: int = EVENT_LIMIT_Q,
    with_host: bool = EVENT_WITH_HOST_Q,
):  # fmt: skip
    """What happened in the fleet, newest first: status changes (with the reason), models added,
    removed, loaded and unloaded, registrations and removals (by whom), sidecars going silent and
    coming back. Filters combine; `next` pages on to older events."""
    query = services.EventQuery(
        endpoint=endpoint, host=host, kind=kind, since=since, cursor=cursor, limit=limit, with_host=with_host
    )
    return _send(request, services.find_events(query))


@api.get(
    "/route",
    auth=read_auth,
    response={200: Route, **errors(400, 401, 403), 404: RouteNotFound, 503: RouteUnavailable},
    tags=["fleet"],
)
def route(
    request,
    model: str = Query(
        ..., min_length=1, max_length=200, pattern=NAME_PATTERN,
        description='the model, e.g. "llama3:8b"; without a tag, "llama3" means "llama3:latest"',
    ),
    n: int = Query(3, ge=1, le=services.MAX_ROUTES, description=f"how many endpoints (1 to {services.MAX_ROUTES})"),
):  # fmt: skip
    """The best healthy endpoints for a model, ranked: loaded first, then those whose host has the
    most free VRAM (a model that fits a GPU before one that does not), hosts with stale resources
    last; equal ones in a random order. Each says why. 404 lists the models the fleet has; 503
    (with Retry-After) when the endpoints holding it are all down."""
    return _send(request, services.route(model, n))


# --- history ----------------------------------------------------------------------------

READ_AUTH = [TokenAuth(Token.Scope.ADMIN), UserSession()]  # like the snapshot
_MONTHS = r"(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?"
SINCE_Q = Query(
    "",
    pattern=rf"^(-[0-9]{{1,7}}[smhd]|[0-9]{{4}}-{_MONTHS}T{_CLOCK})?$",
    description='from when: a time ago ("-90m", "-24h", "-30d") or an ISO 8601 time; default the last 24 hours '
    "(history is kept HISTORY_RETENTION_DAYS)",
)
STEP_Q = Query(
    None,
    ge=60,
    le=86_400,
    multiple_of=60,
    description="seconds per point (60, 300, 900, 3600, ...); default the finest that keeps a curve within "
    "3,000 points",
)
NAMES_Q = Query(
    ...,
    min_length=1,
    max_length=100 * 254,
    pattern=r"^[^,\x00-\x1f\x7f]+(,[^,\x00-\x1f\x7f]+){0,99}$",
    description="up to 100 host names, comma-separated",
)


@api.get(
    "/hosts/history",
    auth=READ_AUTH,
    response={200: HostsHistory, **errors(*ANY_ROUTE)},
    tags=["history"],
)
def hosts_history(request, names: str = NAMES_Q, since: str = SINCE_Q, step: int | None = STEP_Q):
    """CPU, RAM and VRAM over time of several hosts in one reply (the dashboard's sparklines)."""
    return _send(request, services.hosts_history(names.split(","), since, step))


@api.get(
    "/hosts/{name}/history",
    auth=READ_AUTH,
    response={200: HostHistory, **errors(*ANY_ROUTE, 404)},
    tags=["history"],
)
def host_history(request, name: str, since: str = SINCE_Q, step: int | None = STEP_Q):
    """One host's CPU, RAM and VRAM (per GPU too) over time, as column arrays: raw reports for
    RESOURCE_RETENTION_HOURS, 15-minute min/avg/max for HISTORY_RETENTION_DAYS."""
    return _send(request, services.host_history(name, since, step))


@api.get(
    "/endpoints/{endpoint_id}/history",
    auth=READ_AUTH,
    response={200: EndpointHistory, **errors(*ANY_ROUTE, 404)},
    tags=["history"],
)
def endpoint_history(request, endpoint_id: int, since: str = SINCE_Q, step: int | None = STEP_Q):
    """One endpoint's probe latency over time (average, lowest, highest ms; probes and failures)."""
    return _send(request, services.endpoint_history(endpoint_id, since, step))


@api.post(
    "/sidecar/report",
    auth=TokenAuth(*ingest.REPORT_SCOPES),
    response={200: ReportOut, **ERRORS, 503: ErrorBody},
    tags=["sidecar"],
)
def sidecar_report(request, payload: SidecarReport):
    """Record a host's resources; register its Ollama (source auto) when `ollama_url` is given.

    Under daphne, well-formed reports are answered by the group-commit path in registry.ingest
    (same checks, same reply); this view answers the rest, and serves other servers and tests.
    """
    token = request.auth_token
    peer = services.client_address(request.META.get("REMOTE_ADDR"), request.META.get("HTTP_X_FORWARDED_FOR"))
    services.check_report(payload, token, peer)
    if not token.host:
        services.check_report(payload, services.bind_token(token, payload.host), peer)  # first report binds
    endpoint_id = services.record_report(payload)
    metrics.reports_accepted()
    return ingest.reply_body(payload, endpoint_id)
