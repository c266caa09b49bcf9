"""A lean HTTP/1.1 client for probes on asyncio streams, parsed by httptools, and the httpx seam.

The connection, the requests and the policy (fixed GETs, caps, keep-alive) are ours; parsing the
replies (status line, headers, Content-Length, chunked bodies, trailers) is llhttp's, through
httptools, the parser uvicorn uses. It replaced a home-made parser of ~90 lines. Parse cost of one
1.4 KB /api/tags reply (`bench/reply_parse.py`: the reply already buffered, no socket; five
interleaved runs of each on this shared 2-core box, load 4-5, best / median of 15 rounds):

    home-made parser (before), Content-Length body       5.4-8.7 / 5.8-13.6 us
    httptools + our callbacks (now), Content-Length      4.2-5.3 / 4.9-7.2 us
    home-made parser (before), chunked body              10.8-13.4 / 16.4-21.4 us
    httptools + our callbacks (now), chunked body        4.6-6.0 / 6.2-10.5 us
    for scale: httptools alone, no checks 1.6 us; h11 0.16 (pure Python) ~50 us

Why not httpx: its per-request CPU cost. CPU-seconds of the probing process per 1,000 healthy
probes (3 requests each), 900 fake endpoints served by another process over loopback on this
2-core box, median (best) of 5 interleaved sweeps; the box is shared, so single figures move
by +-20%:

    httpx.AsyncClient over httpx_aiohttp.AiohttpTransport, one shared session   2.9 (2.2) s
    httpx Request/Response straight into that AiohttpTransport, no AsyncClient   2.3 (1.8) s
    one httpx.AsyncClient per target, one prebuilt SSL context shared            4.6 (4.2) s
    Http11Connection below, with the home-made parser then                       0.87 (0.62) s
    floor: bare asyncio streams + pydantic, no checks at all                     0.5 (0.38) s

Neither httpx option meets the target (well under 1 s): AsyncClient's per-request work (URL
merging, cookie extraction, auth and redirect hooks) is ~0.3 ms per request even with a null
transport, and aiohttp's connector ~0.5 ms per request here. Probes need none of that, so the
default is `Http11Connection` (GET; Content-Length, chunked or until-close bodies; keep-alive
across the three calls). Moving its parsing to httptools kept `bench/probe_sweep.py` where it
was: CPU per 1,000 healthy probes at 1,000 endpoints, median of 7 runs before and 6 after,
interleaved on the loaded box, 0.34 s before, 0.29 s after (ranges 0.29-0.43 and 0.24-0.34 s).
httpx stays the API at the seam: `httpx_connections(t)` sends probes through any httpx
transport (httpx.MockTransport in tests, AiohttpTransport if the CPU budget ever allows).

The event loop, measured the same way through `registry.ollama.probe_many_sync` (two
sessions of 5 interleaved sweeps each, median):

    stdlib asyncio loop (asyncio.run, as before)                                0.86 / 1.01 s
    uvloop 0.23, collector left on                                              0.58 / 0.64 s
    uvloop with the cyclic collector paused for the sweep (`run_sweep`)         0.46 / 0.58 s

uvloop saves about a third, so `run_sweep` uses it when installed (requirements.txt, not on
Windows). Pausing the collector saves 9-21% more (its passes are ~14% of a sweep's CPU) and
defers almost nothing: 900 healthy or refused probes leave no cyclic garbage at all, and a
failed reply (500, redirect, oversized) only some 10 objects.

TLS: an endpoint registered as https:// is probed over TLS (stdlib ssl, over the same asyncio
stream), its certificate verified against the system store or the CA bundle PROBE_CA_BUNDLE
names, its name (or, for an IP literal, its address) checked against the certificate. One
SSLContext per process and bundle: building one reads the whole store (milliseconds), so it
is made once and rebuilt only when the bundle file changes. A failed verification is a short
sentence ("certificate not trusted", "certificate does not match the host name"), never a raw
OpenSSL message. Plain-HTTP connections take none of this path.

Safety here: no proxies (environment ignored), redirects, cookies or decompression; at
most 1 MiB of body per reply, streamed and counted (a Content-Length over it is refused at the
head, and is otherwise only an upper bound), at most 64 KiB of head and 1 MiB + 128 KiB on the
wire; llhttp refuses what could smuggle a second reply (two Content-Lengths, Content-Length
with Transfer-Encoding, bad chunk sizes), and bytes after a reply close the connection instead
of being read as the next reply. The Host header is checked so a registered name cannot smuggle
a path or a second header. The caller resolves and checks the IP; this module only connects to
the IP it is given.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol, TypeVar

import httptools
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
    def address(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def scheme(self) -> str: ...  # "http" or "https"

    @property
    def authorization(self) -> str: ...  # an Authorization header value to send, or ""


_HEAD_LIMIT = 64 * 1024  # bytes of status line + headers (of interim 1xx replies too)
# Bytes on the wire per reply: the body's 1 MiB plus room for the head, chunk framing and
# trailers, which llhttp parses but does not cap.
_WIRE_LIMIT = MAX_REPLY_BYTES + 2 * _HEAD_LIMIT
_READ_SIZE = 64 * 1024
_BAD_HOST_CHARS = frozenset(" /?#@\\")  # with non-printables: what must not reach a Host header


class Connection(Protocol):
    """One probe's way to GET fixed paths from one endpoint: (status, body if status is 200)."""

    async def get(self, path: str, *, last: bool = False) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


ConnectionFactory = Callable[[str, Target], Connection]  # (allowed ip, target) -> Connection


class Http11Connection:
    """GETs over one kept-alive HTTP/1.1 connection to an IP, naming the registered Host.

    No proxies, redirects, cookies or decompression; the body is capped while it streams. An
    https target is spoken to over TLS, verified against `ca_bundle` (else the system store).
    """

    def __init__(self, ip: str, target: Target, *, ca_bundle: str = "") -> None:
        self._address = (ip, target.port)
        self._headers = b"Host: %s\r\nAccept: application/json\r\nAccept-Encoding: identity\r\nUser-Agent: %s\r\n" % (
            host_header(target.address, target.port),
            USER_AGENT,
        )
        if target.authorization:
            self._headers += b"Authorization: %s\r\n" % authorization_header(target.authorization)
        # The name the certificate must carry: for an IP literal, an IP address SAN.
        self._tls = (target.address.strip("[]"), ca_bundle) if target.scheme == "https" else None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, *, last: bool = False) -> tuple[int, bytes]:
        if self._writer is None:
            if self._tls is None:
                self._reader, self._writer = await asyncio.open_connection(*self._address)
            else:
                self._reader, self._writer = await open_tls(self._address, *self._tls)
        assert self._reader is not None
        # On the last request the server closes first, so TIME_WAIT sockets pile up there, not here.
        close = b"Connection: close\r\n" if last else b""
        self._writer.write(b"GET %s HTTP/1.1\r\n%s%s\r\n" % (path.encode("ascii"), self._headers, close))
        reusable = False
        try:
            reply = await read_reply(self._reader)
            reusable = reply.keep_alive and not last
            return reply.status, b"".join(reply.parts)
        finally:
            if not reusable:
                await self.aclose()

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def http11_connections(ca_bundle: str = "") -> ConnectionFactory:
    """Return the default connection factory, verifying TLS against `ca_bundle` (else the system store)."""
    return functools.partial(Http11Connection, ca_bundle=ca_bundle) if ca_bundle else Http11Connection


async def open_tls(
    address: tuple[str, int], server_hostname: str, ca_bundle: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to `address` over TLS, verifying the certificate for `server_hostname`."""
    context = tls_context(ca_bundle)
    try:
        return await asyncio.open_connection(*address, ssl=context, server_hostname=server_hostname)
    except ssl.SSLCertVerificationError as exc:
        raise OllamaError(certificate_error(exc)) from None
    except ssl.SSLError:
        raise OllamaError("TLS handshake failed") from None


# OpenSSL's X509_V_ERR_* codes that deserve their own sentence; every other failure of
# verification (unknown issuer, self-signed, bad signature, ...) is "certificate not trusted".
_X509_EXPIRED, _X509_NOT_YET_VALID, _X509_HOSTNAME_MISMATCH, _X509_IP_MISMATCH = 10, 9, 62, 64


def certificate_error(exc: ssl.SSLCertVerificationError) -> str:
    """A short sentence for a certificate the probe refused."""
    code = exc.verify_code
    if code == _X509_HOSTNAME_MISMATCH:
        return "certificate does not match the host name"
    if code == _X509_IP_MISMATCH:
        return "certificate does not match the IP address"
    if code == _X509_EXPIRED:
        return "certificate expired"
    if code == _X509_NOT_YET_VALID:
        return "certificate not yet valid"
    return "certificate not trusted"


def tls_context(ca_bundle: str = "") -> ssl.SSLContext:
    """The process's client context for `ca_bundle` ("" = the system store), rebuilt when the file changes."""
    if not ca_bundle:
        return _tls_context("", 0)
    try:
        changed = os.stat(ca_bundle).st_mtime_ns
    except OSError:
        raise OllamaError("the CA bundle (PROBE_CA_BUNDLE) cannot be read") from None
    return _tls_context(ca_bundle, changed)


@functools.lru_cache(maxsize=4)
def _tls_context(ca_bundle: str, changed: int) -> ssl.SSLContext:
    try:
        # Verification on, host names checked, TLS 1.2 or newer: the library's defaults.
        return ssl.create_default_context(cafile=ca_bundle or None)
    except (OSError, ValueError):  # ssl.SSLError is an OSError: a file that holds no certificate
        raise OllamaError("the CA bundle (PROBE_CA_BUNDLE) cannot be read") from None


def authorization_header(value: str) -> bytes:
    """The Authorization value as header bytes; refuses what could break out of one header line."""
    if not value.isascii() or not value.isprintable():
        raise OllamaError("the stored Authorization header is not valid")  # never quote the value
    return value.encode("ascii")


class HttpxConnection:
    """The same over any httpx transport (httpx.MockTransport in tests, AiohttpTransport, ...)."""

    def __init__(self, transport: httpx.AsyncBaseTransport, ip: str, target: Target) -> None:
        self._transport, self._ip, self._port = transport, ip, target.port
        self._scheme = target.scheme
        self._headers = [
            (b"Host", host_header(target.address, target.port)),
            (b"Accept", b"application/json"),
            (b"Accept-Encoding", b"identity"),
            (b"User-Agent", USER_AGENT),
        ]
        if target.authorization:
            self._headers.append((b"Authorization", authorization_header(target.authorization)))

    async def get(self, path: str, *, last: bool = False) -> tuple[int, bytes]:
        url = httpx.URL(scheme=self._scheme, host=self._ip, port=self._port, path=path)
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


class _Stop(Exception):
    """Raised from a parser callback to stop feeding: the reply is decided (not a 200, or over)."""


class _Reply:
    """The httptools callbacks for one reply: its final status, framing, and a body capped as it streams."""

    __slots__ = ("parser", "status", "head_done", "done", "keep_alive", "length", "chunked", "parts", "size")

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.head_done = self.done = self.keep_alive = self.chunked = False
        self.length: int | None = None  # the declared Content-Length
        self.parts: list[bytes] = []
        self.size = 0

    def on_message_begin(self) -> None:
        if self.done:  # bytes after the reply: never read them as the next reply
            raise _Stop
        self.length, self.chunked = None, False  # after an interim 1xx reply

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a trailer field
        name = name.lower()
        if name == b"content-length":
            self.length = int(value)  # llhttp has checked the digits and refused a second one
        elif name == b"transfer-encoding":
            self.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        status = self.parser.get_status_code()
        if status == 101 or self.parser.get_http_version() not in ("1.1", "1.0"):
            raise OllamaError("reply is not valid HTTP")
        if 100 <= status < 200:
            return  # interim reply; the real one follows
        self.status, self.head_done = status, True
        if status != 200:  # other replies are failures: their bodies are not worth reading
            self.done = True
            raise _Stop
        if self.length is not None and self.length > MAX_REPLY_BYTES:
            raise OllamaError("reply larger than 1 MiB")
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_REPLY_BYTES:
            raise OllamaError("reply larger than 1 MiB")
        self.parts.append(body)

    def on_message_complete(self) -> None:
        self.done = self.head_done

    def ends_at_close(self) -> bool:
        """Whether the connection closing now ends the body (RFC 9112 section 6.3, item 8)."""
        return self.head_done and self.length is None and not self.chunked


async def read_reply(reader: asyncio.StreamReader) -> _Reply:
    """Feed what arrives to llhttp until the reply ends; a status other than 200 ends it at its head."""
    reply = _Reply()
    reply.parser = parser = httptools.HttpResponseParser(reply)
    fed = 0
    try:
        while not reply.done:
            # Until the head is complete, read no more than it may still take: a long one ends here.
            data = await reader.read(_READ_SIZE if reply.head_done else _HEAD_LIMIT + 1 - fed)
            if not data:
                if reply.ends_at_close():
                    break
                raise OllamaError("connection closed by the server")
            fed += len(data)
            if fed > _WIRE_LIMIT:
                raise OllamaError("reply larger than 1 MiB")
            _feed(parser, reply, data)
            if not reply.head_done and fed > _HEAD_LIMIT:
                raise OllamaError("reply is not valid HTTP")
    finally:
        reply.parser = None  # break the reply <-> parser cycle: no garbage left for the collector
    return reply


def _feed(parser: httptools.HttpResponseParser, reply: _Reply, data: bytes) -> None:
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
        if reply.done:  # what follows a decided reply is ignored, and the connection not reused
            reply.keep_alive = False
            return
        # No local names for the exceptions: a frame holding one would be a cycle with its traceback.
        if isinstance(exc.__context__, OllamaError):  # what a callback raised
            raise exc.__context__ from None
        raise OllamaError("reply is not valid HTTP") from None


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
