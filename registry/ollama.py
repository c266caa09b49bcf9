"""Probe Ollama servers: /api/version, /api/tags and /api/ps under one deadline, safely.

Transport: by default a probe's three GETs share one kept-alive `registry.http11.Http11Connection`,
a lean HTTP/1.1 client on asyncio streams whose replies httptools (llhttp) parses, because httpx
cost 2.6 to 5 times as much CPU (2.3-4.6 s instead of 0.87 s per 1,000 probes; the tables, the
parse cost per reply and the reasons are in registry.http11's docstring).
httpx stays the API at the seam: `httpx_connections(t)` sends probes through any httpx transport
(httpx.MockTransport in tests). The transport names are re-exported here for existing callers.

Safety: anyone holding a sidecar token can make the hub connect somewhere, so a probe only
GETs fixed paths, never follows redirects, has no proxy support at all (environment ignored),
reads at most 1 MiB per reply (streamed and counted; a Content-Length is only an upper bound),
validates each reply's shape, and checks the address it actually connects to: it resolves the
name itself, refuses if any address is outside the allowlist (link-local always), and connects
to that IP with the original Host header, so a DNS change between check and connect cannot
dodge the check. The same holds over TLS (https endpoints), where the certificate must also be
trusted (system store or PROBE_CA_BUNDLE) and match the registered name or address. An
endpoint's Authorization header (for a proxy in front of Ollama) is sent with its three GETs and
never appears in a result, an error or a log line.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import httpx
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

# The transport, re-exported so callers keep importing it from here.
from registry.http11 import MAX_REPLY_BYTES as MAX_REPLY_BYTES
from registry.http11 import USER_AGENT as USER_AGENT
from registry.http11 import Connection as Connection
from registry.http11 import ConnectionFactory as ConnectionFactory
from registry.http11 import Http11Connection as Http11Connection
from registry.http11 import HttpxConnection as HttpxConnection
from registry.http11 import OllamaError as OllamaError
from registry.http11 import host_header as host_header
from registry.http11 import http11_connections as http11_connections
from registry.http11 import httpx_connections as httpx_connections
from registry.http11 import read_capped as read_capped
from registry.http11 import run_sweep

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The default of REGISTRY_ALLOWED_NETWORKS (settings reads it from here): loopback and private ranges.
DEFAULT_ALLOWED_NETWORKS = "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7"
NOT_ALLOWED = "address not allowed"


# -- Ollama's replies ----------------------------------------------------------------------------

# Ollama (Go) may send null for an empty list or string: read it as empty, reject other types.
_NullAsEmptyStr = Annotated[str, BeforeValidator(lambda v: "" if v is None else v)]
_NullAsEmptyList = BeforeValidator(lambda v: [] if v is None else v)


_MAX_BIGINT = 2**63 - 1  # what the database stores; a larger "size" is not a real reply


class _Reply(BaseModel):
    # Unknown fields are ignored (Ollama adds some every release); the ones we use are typed.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ModelDetails(_Reply):
    format: _NullAsEmptyStr = ""
    family: _NullAsEmptyStr = ""
    families: list[str] | None = None
    parameter_size: _NullAsEmptyStr = ""
    quantization_level: _NullAsEmptyStr = ""


class TagsModel(_Reply):
    name: str = Field(min_length=1)
    model: _NullAsEmptyStr = ""
    modified_at: datetime | None = None
    size: int = Field(default=0, ge=0, le=_MAX_BIGINT, strict=True)  # strict: "12" or 1.5 is not a size
    digest: _NullAsEmptyStr = ""
    details: ModelDetails = ModelDetails()


class PsModel(TagsModel):
    expires_at: datetime | None = None
    size_vram: int | None = Field(default=None, ge=0, le=_MAX_BIGINT, strict=True)


class VersionReply(_Reply):
    version: str


class TagsReply(_Reply):
    models: Annotated[list[TagsModel], _NullAsEmptyList]


class PsReply(_Reply):
    models: Annotated[list[PsModel], _NullAsEmptyList]


ReplyT = TypeVar("ReplyT", bound=_Reply)


def parse_reply(body: bytes | str, model: type[ReplyT]) -> ReplyT:
    """Parse and validate one reply body, raising OllamaError with a short sentence."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(err["type"] == "json_invalid" for err in exc.errors()):
            raise OllamaError("reply is not valid JSON") from None
        raise OllamaError("reply does not match Ollama's API") from None


# -- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    id: int
    address: str
    port: int
    scheme: str = "http"  # "https": over TLS, certificate verified
    authorization: str = field(default="", repr=False)  # a secret: never in a repr or a log line


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    digest: str
    size: int
    family: str
    parameter_size: str
    quantization: str
    modified_at: datetime | None
    loaded: bool
    size_vram: int | None
    expires_at: datetime | None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    id: int
    ok: bool
    error: str  # "" when ok
    latency_ms: int | None  # wall time of the whole probe, failed ones included
    version: str
    models: tuple[ModelInfo, ...]
    checked_at: datetime


# Why probes fail, as a small fixed set (the Prometheus label `reason`): every error text a probe
# can produce maps to one of these, so a dashboard of failures never grows a series per message.
FAILURE_REASONS = (
    "timeout",
    "refused",
    "unreachable",
    "dns",
    "tls",
    "http_status",
    "bad_reply",
    "not_allowed",
    "other",
)
_REASON_BY_PREFIX = (
    ("timed out", "timeout"),
    ("connection timed out", "timeout"),
    ("connection refused", "refused"),
    ("host unreachable", "unreachable"),
    ("network unreachable", "unreachable"),
    ("name does not resolve", "dns"),
    ("host name is not valid", "dns"),
    ("certificate ", "tls"),
    ("TLS ", "tls"),
    ("the CA bundle", "tls"),
    ("HTTP ", "http_status"),
    ("redirect refused", "http_status"),
    ("reply ", "bad_reply"),
    ("connection closed by the server", "bad_reply"),
    (NOT_ALLOWED, "not_allowed"),
)


def failure_reason(error: str) -> str:
    """The reason (one of FAILURE_REASONS) for a failed probe's error text."""
    for prefix, reason in _REASON_BY_PREFIX:
        if error.startswith(prefix):
            return reason
    return "other"


def merge_models(tags: TagsReply, ps: PsReply | None) -> tuple[ModelInfo, ...]:
    """Combine /api/tags with /api/ps (None when the server has no /api/ps)."""
    running = {m.name: m for m in ps.models} if ps else {}
    infos = [_model_info(m, running.pop(m.name, None)) for m in tags.models]
    infos += [_model_info(m, m) for m in running.values()]  # loaded but not listed: still report it
    return tuple(infos)


def _model_info(model: TagsModel, running: PsModel | None) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        digest=model.digest,
        size=model.size,
        family=model.details.family,
        parameter_size=model.details.parameter_size,
        quantization=model.details.quantization_level,
        modified_at=_utc(model.modified_at),
        loaded=running is not None,
        size_vram=running.size_vram if running else None,
        expires_at=_utc(running.expires_at) if running else None,
    )


def _utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(UTC) if moment is not None else None


# -- which addresses may be probed ---------------------------------------------------------------


def parse_networks(text: str) -> list[Network]:
    """Parse a comma- or space-separated list of CIDR networks."""
    items = text.replace(",", " ").split()
    if not items:
        raise ValueError("the allowed network list is empty; give CIDRs such as 10.0.0.0/8")
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network in CIDR form such as 10.0.0.0/8") from None
    return networks


def _networks(allowed: Iterable[Network] | str) -> Sequence[Network]:
    return parse_networks(allowed) if isinstance(allowed, str) else tuple(allowed)


def address_refusal(ip: str | Address, allowed: Iterable[Network] | str) -> str | None:
    """Return why `ip` may not be probed, or None when it may."""
    try:
        addr = ip if isinstance(ip, Address) else ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return NOT_ALLOWED
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped  # ::ffff:169.254.169.254 is 169.254.169.254
    # Link-local holds cloud metadata services; 0.0.0.0 and :: reach this very host.
    if addr.is_link_local or addr.is_unspecified or addr.is_multicast:
        return NOT_ALLOWED
    if not any(addr in net for net in _networks(allowed)):
        return NOT_ALLOWED
    return None


def literal_refusal(host: str, allowed: Iterable[Network] | str) -> str | None:
    """At registration, refuse an IP literal outside `allowed`; names are checked at probe time."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return address_refusal(host, allowed)


async def resolve_allowed(host: str, allowed: Sequence[Network]) -> str:
    """Resolve `host` and return the IP to connect to, refusing if any address is not allowed."""
    addresses = await _resolve(host.strip("[]"))
    if not addresses:
        raise OllamaError("name does not resolve")
    for address in addresses:
        if refusal := address_refusal(address, allowed):
            raise OllamaError(refusal)
    return str(addresses[0])


async def _resolve(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]  # a literal needs no DNS
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        return []
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))


# -- the three Ollama calls ----------------------------------------------------------------------


async def fetch(
    conn: Connection, path: str, model: type[ReplyT], *, missing_ok: bool = False, last: bool = False
) -> ReplyT | None:
    """GET one fixed path and validate the reply against `model` (None on 404 when `missing_ok`)."""
    status, body = await conn.get(path, last=last)
    if 300 <= status < 400:
        raise OllamaError("redirect refused")
    if status == 404 and missing_ok:
        return None
    if status != 200:
        raise OllamaError(f"HTTP {status}")
    return parse_reply(body, model)


async def get_version(conn: Connection) -> VersionReply:
    return await fetch(conn, "/api/version", VersionReply)  # type: ignore[return-value]


async def get_tags(conn: Connection) -> TagsReply:
    return await fetch(conn, "/api/tags", TagsReply)  # type: ignore[return-value]


async def get_ps(conn: Connection, *, last: bool = True) -> PsReply | None:
    return await fetch(conn, "/api/ps", PsReply, missing_ok=True, last=last)


# -- probes --------------------------------------------------------------------------------------

_CALL_ERRORS = (OllamaError, httpx.HTTPError, OSError)


def describe_error(exc: BaseException) -> str:
    """Turn an exception into a short sentence, looking through wrapped causes."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OllamaError):
            return str(seen)
        if isinstance(seen, ssl.SSLError):  # an OSError too, with OpenSSL's codes in errno
            return "TLS error"
        if isinstance(seen, ConnectionResetError | BrokenPipeError | httpx.ReadError):
            return "connection closed by the server"
        if isinstance(seen, httpx.RemoteProtocolError):
            return "reply is not valid HTTP"
        if isinstance(seen, OSError) and seen.errno in _ERRNO_SENTENCES:
            return _ERRNO_SENTENCES[seen.errno]
        seen = seen.__cause__ or seen.__context__
    return "connection failed"


_ERRNO_SENTENCES = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


async def _probe_calls(
    target: ProbeTarget, allowed: Sequence[Network], connect: ConnectionFactory
) -> tuple[str, tuple[ModelInfo, ...]]:
    """Run one probe and return (version, models), raising on failure.

    1. Resolve the host and check every address against `allowed`.
    2. GET /api/version; a failure only leaves the version empty.
    3. GET /api/tags; this one decides health.
    4. GET /api/ps; a 404 (old Ollama) or a bad reply only means "no loaded-model info".
    """
    conn = connect(await resolve_allowed(target.address, allowed), target)
    try:
        version = ""
        try:
            version = (await get_version(conn)).version
        except _CALL_ERRORS as exc:
            logger.debug("probe %s: /api/version failed: %s", target.id, describe_error(exc))
        tags = await get_tags(conn)
        ps = None
        try:
            ps = await get_ps(conn)
        except _CALL_ERRORS as exc:
            logger.debug("probe %s: /api/ps failed: %s", target.id, describe_error(exc))
    finally:
        await conn.aclose()
    return version, merge_models(tags, ps)


async def _probe(
    target: ProbeTarget, timeout: float, allowed: Sequence[Network], connect: ConnectionFactory
) -> ProbeResult:
    started = time.perf_counter()
    error, version, models = "", "", ()
    try:
        async with asyncio.timeout(timeout):
            version, models = await _probe_calls(target, allowed, connect)
    except TimeoutError:
        error = f"timed out after {timeout:g} s"
    except OllamaError as exc:
        error = str(exc)
    except Exception as exc:  # the probe boundary: every failure becomes a result
        error = describe_error(exc)
        if error == "connection failed":
            logger.warning("probe %s (%s:%s) failed unexpectedly", target.id, target.address, target.port, exc_info=exc)
    latency_ms = round((time.perf_counter() - started) * 1000)
    return ProbeResult(target.id, not error, error, latency_ms, version, models, datetime.now(UTC))


def _failure(target: ProbeTarget, error: str) -> ProbeResult:
    return ProbeResult(target.id, False, error, None, "", (), datetime.now(UTC))


async def probe(
    target: ProbeTarget,
    *,
    timeout: float,
    allowed: Iterable[Network] | str,
    connect: ConnectionFactory | None = None,
    ca_bundle: str = "",
) -> ProbeResult:
    """Probe one endpoint within `timeout` seconds in total; never raises.

    https targets are verified against `ca_bundle` (a PEM file; "" = the system store)."""
    try:
        networks = _networks(allowed)
    except ValueError as exc:
        return _failure(target, str(exc))
    return await _probe(target, timeout, networks, connect or http11_connections(ca_bundle))


async def probe_many(
    targets: Iterable[ProbeTarget],
    *,
    timeout: float,
    allowed: Iterable[Network] | str,
    concurrency: int = 500,
    connect: ConnectionFactory | None = None,
    ca_bundle: str = "",
) -> list[ProbeResult]:
    """Probe all targets concurrently, at most `concurrency` at once; results in target order.

    Each probe's deadline starts when it gets a slot, so hanging endpoints cost one timeout,
    never the sum; only more than `concurrency` hanging endpoints add a round.
    """
    targets = list(targets)
    try:
        networks = _networks(allowed)
    except ValueError as exc:
        return [_failure(target, str(exc)) for target in targets]
    gate = asyncio.Semaphore(concurrency)
    connect = connect or http11_connections(ca_bundle)

    async def one(target: ProbeTarget) -> ProbeResult:
        async with gate:
            return await _probe(target, timeout, networks, connect)

    return list(await asyncio.gather(*(one(target) for target in targets)))


def probe_many_sync(
    targets: Iterable[ProbeTarget],
    *,
    timeout: float,
    allowed: Iterable[Network] | str,
    concurrency: int = 500,
    ca_bundle: str = "",
) -> list[ProbeResult]:
    """Run probe_many from synchronous code (a Celery task, a management command)."""
    return run_sweep(
        probe_many(targets, timeout=timeout, allowed=allowed, concurrency=concurrency, ca_bundle=ca_bundle)
    )
