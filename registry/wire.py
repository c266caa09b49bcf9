"""What the hub sends and accepts on its wires: rows, the snapshot, WebSocket frames, error bodies.

The one place where these shapes are written down (no Django imports). The REST API declares
its responses with these models, so /api/v1/openapi.json documents them; the dashboard
consumer validates browser frames with them; the tests check that what the API and the
consumer really send validates against them. On hot paths rows stay plain dicts
(registry/rows.py builds them): nothing here runs per row or per frame sent.

What clients send is validated elsewhere: the endpoint registration body in registry.schemas
(reused here for the socket's register frame), sidecar reports in agentcom_sidecar.report.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from registry.schemas import EndpointIn


class _Out(BaseModel):
    # Exact shapes: a key a row gains without this module knowing fails the contract tests.
    model_config = ConfigDict(extra="forbid")


# --- rows ------------------------------------------------------------------------------


class ModelEntry(_Out):
    """A model an endpoint holds (from /api/tags) and whether it is loaded (from /api/ps)."""

    name: str
    digest: str
    size: int = Field(description="bytes on disk")
    family: str
    parameter_size: str = Field(description='e.g. "8.0B"')
    quantization: str = Field(description='e.g. "Q4_0"')
    modified_at: datetime | None
    loaded: bool
    size_vram: int | None = Field(description="bytes in VRAM while loaded; null if unknown")
    expires_at: datetime | None = Field(description="when Ollama unloads it; null if not loaded")


class EndpointRow(_Out):
    """One endpoint, as the REST API, the snapshot and the dashboard show it."""

    id: int
    host: str = Field(description="the machine (its resources are keyed by this name)")
    address: str = Field(description="host name or IP the hub connects to; usually equal to host")
    port: int
    scheme: str = Field(description="http, or https: probed over TLS with the certificate verified")
    has_auth: bool = Field(description="probes send an Authorization header (its value is never shown)")
    name: str = Field(description="display name, may be empty")
    url: str = Field(description="scheme://address:port")
    source: str = Field(description="manual (registered by a person) or auto (reported by a sidecar)")
    status: str = Field(description="unknown until the first probe answers, then healthy or unhealthy")
    last_error: str = Field(description="why the last probe failed; empty after a success")
    consecutive_failures: int
    latency_ms: int | None
    version: str = Field(description="Ollama's version, from /api/version")
    last_checked_at: datetime | None
    registered_at: datetime | None
    revision: int = Field(description="grows with every visible change; of two versions of a row keep the higher")
    models: list[ModelEntry]
    uptime_24h: float | None = Field(
        description="percent of the last 24 h the endpoint was healthy, of the time its status was known "
        "(unknown and before registration count for neither side); null without such time"
    )
    uptime_7d: float | None = Field(description="the same over the last 7 days")


class GpuEntry(_Out):
    """One GPU of a host, as its sidecar reported it."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: float | None


class ResourcesRow(_Out):
    """A host's latest resource report."""

    host: str
    hostname: str = Field(description="what the machine calls itself")
    cpu_percent: float
    ram_used_bytes: int
    ram_total_bytes: int
    vram_used_bytes: int | None = Field(description="summed over the GPUs; null without a GPU")
    vram_total_bytes: int | None = Field(description="summed over the GPUs; null without a GPU")
    gpus: list[GpuEntry]
    reported_at: datetime
    stale: bool = Field(description="silent for longer than stale_after_seconds: show unknown, not the numbers")


FleetModels = dict[str, int]  # model name -> number of distinct reachable hosts holding it, most widespread first
FleetLoaded = dict[str, int]  # model name -> number of distinct reachable hosts where it is loaded (absent: none)


class Snapshot(_Out):
    """The whole registry (GET /api/v1/snapshot, and the dashboard's `snapshot` frame)."""

    server_time: datetime
    stale_after_seconds: int
    total: int = Field(description="endpoints matching the filters in all (endpoints holds one page of them)")
    endpoints: list[EndpointRow]
    resources: dict[str, ResourcesRow] = Field(
        description="host name -> latest resources (hosts that reported; when filtered, only the rows' hosts)"
    )
    fleet_models: FleetModels = Field(
        description="model name -> number of distinct hosts holding it among endpoints that answer (healthy), "
        "most widespread first; never filtered"
    )
    fleet_loaded: FleetLoaded = Field(description="model name -> number of those hosts where it is loaded now")


class EventRow(_Out):
    """Something that happened (GET /api/v1/events)."""

    id: int
    at: datetime
    kind: str = Field(
        description="status, model_added, model_removed, model_loaded, model_unloaded, registered, removed, "
        "changed, host_silent or host_back"
    )
    endpoint_id: int | None = Field(description="the endpoint (it may have been removed since); null for host events")
    endpoint_label: str = Field(description='"name" (address:port) or address:port; empty for host events')
    host: str = Field(description="the machine")
    detail: dict = Field(
        description='by kind: status {"from", "to", "reason"}; model_* {"model"}; registered, removed {"by"}; '
        'host_silent, host_back {"last_report_at", "silent_for" (seconds)}'
    )


class EventPage(_Out):
    """A page of events, newest first."""

    events: list[EventRow]
    next: str | None = Field(description="pass as `cursor` for the next (older) page; null on the last page")


# --- history (GET /api/v1/hosts/{name}/history, /hosts/history, /endpoints/{id}/history) ------
# Column arrays: index i of every list is the bin that starts at t[i] (Unix seconds, a multiple of
# step); bins without data are left out. Percentages are of the total at the time.


class GpuSeries(_Out):
    """One GPU's memory use over time."""

    index: int
    name: str = Field(description="as the host reports it now")
    used: list[float | None] = Field(description="average percent of its memory in use per bin")
    max: list[float | None] = Field(description="highest percent in use per bin")


class HostSeries(_Out):
    """A host's resources over time."""

    t: list[int] = Field(description="start of each bin, Unix seconds")
    samples: list[int] = Field(description="raw reports behind each bin")
    cpu: list[float | None] = Field(description="average CPU percent")
    cpu_min: list[float | None]
    cpu_max: list[float | None]
    ram: list[float | None] = Field(description="average percent of RAM in use")
    ram_max: list[float | None]
    vram: list[float | None] = Field(description="average percent of VRAM in use, summed over the GPUs; null without")
    vram_max: list[float | None]
    gpus: list[GpuSeries]


class HostHistory(HostSeries):
    """GET /api/v1/hosts/{name}/history."""

    host: str
    since: datetime
    until: datetime
    step: int = Field(description="seconds per bin")


class SparkSeries(_Out):
    """What a sparkline draws of a host."""

    t: list[int] = Field(description="start of each bin, Unix seconds")
    cpu: list[float | None] = Field(description="average CPU percent")
    vram_top: list[float | None] = Field(
        description="average percent of VRAM in use on the fullest GPU (summed VRAM without GPU detail); null without"
    )


class HostsHistory(_Out):
    """GET /api/v1/hosts/history?names=a,b: several hosts' sparklines in one reply."""

    since: datetime
    until: datetime
    step: int = Field(description="seconds per bin")
    hosts: dict[str, SparkSeries] = Field(description="host name -> curves (unknown names are left out)")


class EndpointHistory(_Out):
    """GET /api/v1/endpoints/{id}/history: probe latency over time."""

    endpoint_id: int
    since: datetime
    until: datetime
    step: int = Field(description="seconds per bin")
    t: list[int] = Field(description="start of each bin, Unix seconds")
    probes: list[int]
    failures: list[int] = Field(description="probes that got no valid answer")
    latency: list[float | None] = Field(description="average ms of the probes that answered; null if none did")
    latency_min: list[int | None]
    latency_max: list[int | None]


class ErrorBody(_Out):
    """Every REST error: a stable code and a sentence naming the field."""

    error: str = Field(description='stable code, e.g. "invalid_input", "not_found", "already_registered"')
    detail: str = Field(description="a sentence a person can act on")


# --- routing (GET /api/v1/route) ---------------------------------------------------------


class RouteWhy(_Out):
    """Why an endpoint ranks where it does."""

    loaded: bool = Field(description="the model is loaded now (from /api/ps); ranks first")
    fits: bool | None = Field(
        description="loaded: Ollama holds it in VRAM (false: on the CPU); not loaded: model_bytes fits the free "
        "VRAM of one GPU; null when unknown (resources stale or missing)"
    )
    model_bytes: int = Field(description="the model's size: in VRAM when loaded, else on disk")
    vram_free_bytes: int | None = Field(description="free VRAM on the host, summed over its GPUs; null if unknown")
    gpu_free_bytes: int | None = Field(description="free VRAM of the host's emptiest GPU; null if unknown")
    cpu_percent: float | None = Field(description="the host's CPU load; null if unknown")
    resources: Literal["fresh", "stale", "none"] = Field(
        description="the host's sidecar report: current, older than stale_after_seconds, or never"
    )
    reported_at: datetime | None = Field(description="when the host's sidecar last reported")
    latency_ms: int | None = Field(description="how long the endpoint's last stored probe took")


class RouteEntry(_Out):
    """One endpoint to use, best first."""

    rank: int = Field(description="1 for the best")
    id: int = Field(description="the endpoint's id")
    url: str = Field(description="where to send Ollama requests: scheme://address:port")
    host: str = Field(description="the machine")
    name: str = Field(description="display name, may be empty")
    why: RouteWhy


class Route(_Out):
    """GET /api/v1/route: the healthy endpoints holding a model, best first."""

    model: str = Field(description='the model matched ("llama3" asks for "llama3:latest")')
    candidates: int = Field(description="healthy endpoints holding it (routes holds the best n)")
    as_of: datetime = Field(description="when the hub read the registry this answer comes from")
    routes: list[RouteEntry]


class RouteNotFound(ErrorBody):
    """404 from GET /api/v1/route: no endpoint holds the model."""

    models: list[str] = Field(description="the models healthy endpoints of the fleet do hold")


class RouteUnavailable(ErrorBody):
    """503 from GET /api/v1/route (with Retry-After): endpoints hold the model but none is healthy;
    or the database is busy (then without `holders`)."""

    holders: int | None = Field(default=None, description="how many (unhealthy or unknown) endpoints hold it")


# --- WebSocket frames, server -> browser --------------------------------------------------

MAX_FRAME_BYTES = 256 * 1024  # no server -> browser frame is larger (UTF-8 bytes of its JSON)
CLOSE_SESSION_ENDED = 4401  # logged out (in any tab) or the session expired: log in again
CLOSE_DEACTIVATED = 4403  # the account was deactivated
# The hub's Redis does not answer: try again later, with backoff (1013 says the same, but the
# WebSocket server daphne uses only sends 1000 and 3000-4999; 4000 + the HTTP status, as 4401/4403).
CLOSE_TRY_AGAIN = 4503


class SnapshotFrame(Snapshot):
    """Sent on connect and in reply to `request_snapshot`: the whole registry, in the dashboard's
    default order (problems first, then by host in natural order). A frame never exceeds
    MAX_FRAME_BYTES: when the registry does not fit, this frame carries the first rows and
    `snapshot_part` frames carry the rest, back to back."""

    type: Literal["snapshot"]
    complete: bool = Field(description="false: snapshot_part frames follow until one says complete")


class SnapshotPartFrame(_Out):
    """The rest of a snapshot too large for one frame (rows and the resources of their hosts)."""

    type: Literal["snapshot_part"]
    endpoints: list[EndpointRow]
    resources: dict[str, ResourcesRow]
    complete: bool = Field(description="true on the last part")


class RegistryUpdateFrame(_Out):
    """What changed since the last frame (several changes may share one)."""

    type: Literal["llm_registry_update"]
    server_time: datetime
    endpoints: list[EndpointRow] = Field(description="full rows of changed endpoints")
    removed: list[int] = Field(description="ids of removed endpoints")
    resources: dict[str, ResourcesRow | None] = Field(description="hosts whose resources changed; null: drop the host")
    # Omitted (never null) when nothing that changes them changed.
    fleet_models: FleetModels = Field(default=None, description="the new fleet summary; omitted when unchanged")
    fleet_loaded: FleetLoaded = Field(default=None, description="sent with fleet_models")
    checked: dict[str, datetime] = Field(
        default=None, description="endpoint id -> when an endpoint whose probe changed nothing was last probed"
    )


class EndpointRegisteredFrame(_Out):
    """Reply to this browser's `register_llm_endpoint`."""

    type: Literal["llm_endpoint_registered"]
    endpoint: EndpointRow


class EndpointRemovedFrame(_Out):
    """Reply to this browser's `remove_llm_endpoint`."""

    type: Literal["llm_endpoint_removed"]
    id: int


class PermissionsFrame(_Out):
    """What this user may do now: sent when an account's permissions change while connected.

    A session that ends (logout anywhere, expiry) or an account deactivated closes the socket
    instead, with code 4401 (session ended) or 4403 (account deactivated)."""

    type: Literal["llm_permissions"]
    can_add: bool
    can_delete: bool


class EndpointErrorFrame(_Out):
    """A refused or malformed command; the connection stays up."""

    type: Literal["llm_endpoint_error"]
    error: str = Field(description="a sentence a person can act on")


# --- WebSocket frames, browser -> server (validated by the consumer) ----------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore")


class RequestSnapshotFrame(_In):
    type: Literal["request_snapshot"]


class RegisterEndpointFrame(EndpointIn):
    """`{type, host, port?, name?}`: the same fields and checks as POST /api/v1/endpoints."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["register_llm_endpoint"]


class RemoveEndpointFrame(_In):
    type: Literal["remove_llm_endpoint"]
    id: int

    @field_validator("id", mode="before")
    @classmethod
    def _whole_number(cls, value):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError("id must be a whole number")


BROWSER_FRAMES: dict[str, type[BaseModel]] = {
    "request_snapshot": RequestSnapshotFrame,
    "register_llm_endpoint": RegisterEndpointFrame,
    "remove_llm_endpoint": RemoveEndpointFrame,
}
SERVER_FRAMES: dict[str, type[BaseModel]] = {
    "snapshot": SnapshotFrame,
    "snapshot_part": SnapshotPartFrame,
    "llm_permissions": PermissionsFrame,
    "llm_registry_update": RegistryUpdateFrame,
    "llm_endpoint_registered": EndpointRegisteredFrame,
    "llm_endpoint_removed": EndpointRemovedFrame,
    "llm_endpoint_error": EndpointErrorFrame,
}
