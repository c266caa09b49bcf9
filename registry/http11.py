"""A small HTTP/1.1 client on asyncio streams, just enough for probes, and the httpx seam.

Why not httpx: its per-request CPU cost. CPU-seconds of the probing process per 1,000 healthy
probes (3 requests each), 900 fake endpoints served by another process over loopback on this
2-core box, median (best) of 5 interleaved sweeps; the box is shared, so single figures move
by +-20%:

    httpx.AsyncClient over httpx_aiohttp.AiohttpTransport, one shared session   2.9 (2.2) s
    httpx Request/Response straight into that AiohttpTransport, no AsyncClient   2.3 (1.8) s
    one httpx.AsyncClient per target, one prebuilt SSL context shared            4.6 (4.2) s
    Http11Connection below (the default)                                         0.87 (0.62) s
    floor: bare asyncio streams + pydantic, no checks at all                     0.5 (0.38) s

Neither httpx option meets the target (well under 1 s): AsyncClient's per-request work (URL
merging, cookie extraction, auth and redirect hooks) is ~0.3 ms per request even with a null
transport, and aiohttp's connector ~0.5 ms per request here. Probes need none of that, so the
default is `Http11Connection`, a deliberately small HTTP/1.1 client (GET; Content-Length,
chunked or until-close bodies; keep-alive across the three calls). httpx stays the API at the
seam: `httpx_connections(t)` sends probes through any httpx transport (httpx.MockTransport in
tests, AiohttpTransport if the CPU budget ever allows).

The event loop, measured the same way through `registry.ollama.probe_many_sync` (two
sessions of 5 interleaved sweeps each, median):

    stdlib asyncio loop (asyncio.run, as before)                                0.86 / 1.01 s
    uvloop 0.23, collector left on                                              0.58 / 0.64 s
    uvloop with the cyclic collector paused for the sweep (`run_sweep`)         0.46 / 0.58 s

uvloop saves about a third, so `run_sweep` uses it when installed (requirements.txt, not on
Windows). Pausing the collector saves 9-21% more (its passes are ~14% of a sweep's CPU) and
defers almost nothing: 900 healthy or refused probes leave no cyclic garbage at all, and a
failed reply (500, redirect, oversized) only some 10 objects.

Safety here: no proxies (environment ignored), redirects, cookies, TLS or decompression; at
most 1 MiB per reply, streamed and counted (a Content-Length is only an upper bound); the Host
header is checked so a registered name cannot smuggle a path or a second header. The caller
resolves and checks the IP; this module only connects to the IP it is given.
"""

from __future__ import annotations

import asyncio
import gc
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, NamedTuple, Protocol, TypeVar

import httpx

try:
    from uvloop import new_event_loop as _fast_loop
except ImportError:  # optional (no Windows build): the stdlib loop works, at more CPU
    _fast_loop = None

MAX_REPLY_BYTES = 1024 * 1024
USER_AGENT = b"agentcom-llm-registry-probe"

T = TypeVar("T")


# Lives here, not in registry.ollama (which imports this module and re-exports it), so that a
# transport failure and a bad reply are one exception class to the caller.
class OllamaError(Exception):
    """A probe failed; the message is a short sentence a person can act on."""


class Target(Protocol):
    """What a connection needs to know about an endpoint (registry.ollama.ProbeTarget)."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


_HEAD_LIMIT = 64 * 1024  # bytes of status line + headers, and of one chunk-size line
_READ_SIZE = 64 * 1024
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
_BAD_HOST_CHARS = frozenset(" /?#@\\")  # with non-printables: what must not reach a Host header


class Connection(Protocol):
    """One probe's way to GET fixed paths from one endpoint: (status, body if status is 200)."""

    async def get(self, path: str, *, last: bool = False) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


ConnectionFactory = Callable[[str, Target], Connection]  # (allowed ip, target) -> Connection


class Http11Connection:
    """GETs over one kept-alive HTTP/1.1 connection to an IP, naming the registered Host.

    No proxies, redirects, cookies, TLS or decompression; the body is capped while it streams.
    """

    def __init__(self, ip: str, target: Target) -> None:
        self._address = (ip, target.port)
        self._headers = b"Host: %s\r\nAccept: application/json\r\nAccept-Encoding: identity\r\nUser-Agent: %s\r\n" % (
            host_header(target.address, target.port),
            USER_AGENT,
        )
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, *, last: bool = False) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(*self._address, limit=_HEAD_LIMIT)
        assert self._reader is not None
        # On the last request the server closes first, so TIME_WAIT sockets pile up there, not here.
        close = b"Connection: close\r\n" if last else b""
        self._writer.write(b"GET %s HTTP/1.1\r\n%s%s\r\n" % (path.encode("ascii"), self._headers, close))
        reusable, body = False, b""
        try:
            head = await _read_head(self._reader)
            if head.status == 200:  # other replies are failures: their bodies are not worth reading
                body = await _read_body(self._reader, head)
                reusable = head.keep_alive and not last
            return head.status, body
        finally:
            if not reusable:
                await self.aclose()

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class HttpxConnection:
    """The same over any httpx transport (httpx.MockTransport in tests, AiohttpTransport, ...)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, ip: str, target: Target) -> None:
        self._transport, self._ip, self._port = transport, ip, target.port
        self._headers = [
            (b"Host", host_header(target.address, target.port)),
            (b"Accept", b"application/json"),
            (b"Accept-Encoding", b"identity"),
            (b"User-Agent", USER_AGENT),
        ]

    async def get(self, path: str, *, last: bool = False) -> tuple[int, bytes]:
        url = httpx.URL(scheme="http", host=self._ip, port=self._port, path=path)
        response = await self._transport.handle_async_request(httpx.Request("GET", url, headers=self._headers))
        try:
            body = await read_capped(_raw_body(response)) if response.status_code == 200 else b""
        finally:
            await response.aclose()
        return response.status_code, body

    async def aclose(self) -> None:
        pass  # the transport belongs to the caller


async def _raw_body(response: httpx.Response) -> AsyncIterator[bytes]:
    # Raw bytes: never let httpx decompress what the server sends (a gzip bomb stays small here).
    if response.is_stream_consumed:  # already read, as with httpx.MockTransport
        yield response.content
        return
    async for chunk in response.aiter_raw():
        yield chunk


def httpx_connections(transport: httpx.AsyncBaseTransport) -> ConnectionFactory:
    """Return a connection factory that sends every probe through `transport`."""
    return lambda ip, target: HttpxConnection(transport, ip, target)


def host_header(host: str, port: int) -> bytes:
    """Return the Host header value for a registered host (brackets for IPv6, IDNA for names)."""
    host = host.strip("[]")
    if not host or not host.isprintable() or _BAD_HOST_CHARS.intersection(host):
        raise OllamaError("host name is not valid")
    if ":" in host:
        return b"[%s]:%d" % (host.encode("ascii"), port)
    try:
        return b"%s:%d" % (host.encode("ascii"), port)
    except UnicodeEncodeError:
        return b"%s:%d" % (host.encode("idna"), port)


async def read_capped(chunks: AsyncIterator[bytes]) -> bytes:
    """Join a streamed body, giving up past MAX_REPLY_BYTES whatever the headers claimed."""
    parts, total = [], 0
    async for chunk in chunks:
        total += len(chunk)
        if total > MAX_REPLY_BYTES:
            raise OllamaError("reply larger than 1 MiB")
        parts.append(chunk)
    return b"".join(parts)


class _Head(NamedTuple):
    status: int
    keep_alive: bool
    chunked: bool
    length: int | None  # Content-Length; None when absent or overridden by Transfer-Encoding


async def _read_head(reader: asyncio.StreamReader) -> _Head:
    """Read a status line and headers, skipping interim 1xx replies."""
    while True:
        status_line, *lines = (await _read(reader.readuntil, b"\r\n\r\n"))[:-4].split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not code.isdigit() or rest[3:4] not in (b"", b" "):
            raise OllamaError("reply is not valid HTTP")
        status = int(code)
        if 100 <= status < 200 and status != 101:
            continue
        if status == 101:
            raise OllamaError("reply is not valid HTTP")
        return _framing(status, version, _framing_headers(lines))


def _framing_headers(lines: list[bytes]) -> dict[bytes, list[bytes]]:
    """Check every header line; keep only the ones that decide framing and keep-alive."""
    found: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name.strip() != name:
            raise OllamaError("reply is not valid HTTP")
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding", b"connection"):
            found.setdefault(name, []).append(value.strip().lower())
    return found


def _framing(status: int, version: bytes, headers: dict[bytes, list[bytes]]) -> _Head:
    """Apply RFC 9112 section 6.3: how long the body is, and whether the connection survives it."""
    keep_alive = version == b"HTTP/1.1" and b"close" not in b",".join(headers.get(b"connection", []))
    if encodings := headers.get(b"transfer-encoding"):
        chunked = b",".join(encodings).rsplit(b",", 1)[-1].strip() == b"chunked"
        return _Head(status, keep_alive and chunked and b"content-length" not in headers, chunked, None)
    lengths = set(headers.get(b"content-length", []))
    if len(lengths) > 1 or (lengths and not next(iter(lengths)).isdigit()):
        raise OllamaError("reply is not valid HTTP")
    length = int(next(iter(lengths))) if lengths else None
    return _Head(status, keep_alive and length is not None, False, length)


async def _read_body(reader: asyncio.StreamReader, head: _Head) -> bytes:
    """Read a body of at most MAX_REPLY_BYTES: exactly Content-Length bytes, or chunks, or to EOF."""
    if head.status in (204, 304):
        return b""
    if head.length is not None:
        if head.length > MAX_REPLY_BYTES:
            raise OllamaError("reply larger than 1 MiB")
        return await _read(reader.readexactly, head.length)  # never more than it announced
    return await read_capped(_chunks(reader) if head.chunked else _until_eof(reader))


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while size := await _chunk_size(reader):
        while size > 0:  # a chunk may claim any size: pass on what arrives, so the cap counts it
            piece = await reader.read(min(size, _READ_SIZE))
            if not piece:
                raise OllamaError("connection closed by the server")
            size -= len(piece)
            yield piece
        if await _read(reader.readexactly, 2) != b"\r\n":
            raise OllamaError("reply is not valid HTTP")
    while await _read(reader.readuntil, b"\r\n") != b"\r\n":
        pass  # trailer fields, ignored


async def _until_eof(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while piece := await reader.read(_READ_SIZE):
        yield piece


async def _chunk_size(reader: asyncio.StreamReader) -> int:
    size = (await _read(reader.readuntil, b"\r\n"))[:-2].split(b";", 1)[0].strip()
    if not _HEX.fullmatch(size):
        raise OllamaError("reply is not valid HTTP")
    return int(size, 16)


async def _read(read: Callable[[Any], Awaitable[bytes]], arg: Any) -> bytes:
    try:
        return await read(arg)
    except asyncio.LimitOverrunError:
        raise OllamaError("reply is not valid HTTP") from None  # a header or chunk line over 64 KiB
    except asyncio.IncompleteReadError:
        raise OllamaError("connection closed by the server") from None


def run_sweep(main: Coroutine[Any, Any, T]) -> T:
    """Run a sweep of probes from synchronous code, on uvloop when installed, collector paused."""
    # A loop factory, not an event-loop policy: the rest of the process (Django, a Celery
    # worker) keeps the stdlib loop. A sweep leaves (almost) no cyclic garbage, so the
    # collector's passes over the probes in flight are overhead; restore the state we found,
    # so that overlapping sweeps in two threads never leave the collector off.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with asyncio.Runner(loop_factory=_fast_loop) as runner:
            return runner.run(main)
    finally:
        if collecting:
            gc.enable()
