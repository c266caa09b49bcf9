"""The sidecar report path at fleet size: a lean ASGI route and a group-commit writer.

A full Django request costs ~2.8 ms of CPU here (shared/MEASURED.md); a fleet of 1,000 hosts
reporting every 10 s offers 100 reports/s and bursts well above. So a well-formed report from a
known token skips Django's request machinery:

1. `ReportRoute` (ASGI, in front of Django) reads the body, finds the token in the process's
   cache (the database only on a miss, in a thread) and validates the body with the same
   schema and checks as the REST route (`services.check_report`: allowed networks; a sidecar
   token's own host and own machine).
2. It hands the report to `ReportWriter`, which writes everything waiting in ONE transaction
   through `services.record_reports` (group commit: while one batch commits, the next gathers).
3. The reply is sent after the batch commits, so a 200 means stored: nothing acknowledged is lost
   if a process dies afterwards.

Anything else (no or bad token, bad JSON, invalid body, a body over the API's size limit, a
sidecar token's first report, which binds it, an Ollama name not yet resolved) goes to the
REST route in django-ninja unchanged, so every error answer has one implementation. Over
capacity (queue full, or a report not written within REPORT_MAX_WAIT_SECONDS) the answer is a
quick 503 `overloaded` with Retry-After, and that report is not stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from pydantic import ValidationError

from registry import metrics, services
from registry.models import Token
from registry.schemas import SidecarReport

logger = logging.getLogger(__name__)

REPORT_PATH = "/api/v1/sidecar/report"
SOCKET_PATH = "/ws/sidecar/"
REPORT_SCOPES = (Token.Scope.SIDECAR, Token.Scope.ADMIN)
BATCH_MAX = 500
LINGER_SECONDS = 0.01
RETRY_AFTER_SECONDS = 2


class Overloaded(Exception):
    """The hub cannot take this report now; the sender should retry after a while."""


def reply_body(report: SidecarReport, endpoint_id: int | None) -> dict:
    """What the sidecar is told: its host's name and its Ollama's endpoint id (shared with REST)."""
    return {"host": report.host, "endpoint_id": endpoint_id}


def overloaded_body(detail: str) -> dict:
    return {"error": "overloaded", "detail": detail}


@dataclass(slots=True)
class _Pending:
    report: SidecarReport
    token_id: int | None
    deadline: float
    future: Future = field(default_factory=Future)


class ReportWriter:
    """Write queued reports in batches from one thread; each submitter gets a Future."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.queue: deque[_Pending] = deque()
        self.thread: threading.Thread | None = None

    def submit(self, report: SidecarReport, token_id: int | None = None) -> Future:
        """Queue a report; the Future gives its endpoint id once committed, or raises Overloaded."""
        with self.lock:
            if len(self.queue) >= settings.REPORT_QUEUE_MAX:
                raise Overloaded(f"{len(self.queue)} reports are waiting to be written; retry later.")
            item = _Pending(report, token_id, time.monotonic() + settings.REPORT_MAX_WAIT_SECONDS)
            self.queue.append(item)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="report-writer", daemon=True)
                self.thread.start()
            self.wake.notify()
        return item.future

    def _take(self) -> list[_Pending]:
        with self.lock:
            while not self.queue:
                self.wake.wait()
        # Linger a moment so that a batch carries several reports: each transaction has a fixed
        # cost, and under load this keeps the cost per report low.
        time.sleep(LINGER_SECONDS)
        with self.lock:
            count = min(len(self.queue), BATCH_MAX)
            return [self.queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while True:
            batch = self._take()
            now = time.monotonic()
            late = [item for item in batch if item.deadline < now]
            for item in late:
                item.future.set_exception(Overloaded("the hub could not store the report in time; retry later."))
            batch = [item for item in batch if item.deadline >= now]
            if batch:
                self.write(batch)

    def write(self, batch: list[_Pending]) -> None:
        """Record one batch and resolve its futures (never raises: this is the thread's loop)."""
        started = time.monotonic()
        try:
            ids = services.record_reports(
                [item.report for item in batch], token_ids={i.token_id for i in batch if i.token_id}
            )
        except Exception as exc:
            logger.warning("could not store %d sidecar reports: %s", len(batch), exc, exc_info=True)
            connection.close()  # the next batch starts on a fresh connection
            for item in batch:
                item.future.set_exception(Overloaded("the hub could not store the report; retry later."))
            return
        logger.debug("stored %d reports in %.1f ms", len(batch), 1000 * (time.monotonic() - started))
        _release_connection()
        metrics.reports_accepted(len(batch))
        for item, endpoint_id in zip(batch, ids, strict=True):
            item.future.set_result(endpoint_id)


writer = ReportWriter()


class ReportRoute:
    """ASGI: answer well-formed sidecar reports here; pass every other request to `app`."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != REPORT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body, more = await _read_body(receive, limit)
        accepted = None if more or len(body) > limit else await _accept(scope, body)
        if accepted is None:
            await self.app(scope, _replay(body, more, receive), send)
            return
        report, token_id = accepted
        try:
            endpoint_id = await asyncio.wrap_future(writer.submit(report, token_id))
        except Overloaded as exc:
            metrics.report_refused("overloaded")
            await _send_json(send, 503, overloaded_body(str(exc)), retry_after=RETRY_AFTER_SECONDS)
            return
        await _send_json(send, 200, reply_body(report, endpoint_id))


class ReportSocket:
    """ASGI WebSocket at /ws/sidecar/: a sidecar keeps one socket open and sends a report per frame.

    Cheaper than a request per report (no HTTP parsing, no application per request): the frame
    `{"seq": n, "report": {...}}` is answered `{"seq": n, "status": 200, "host", "endpoint_id"}`
    after the report is committed, or `{"seq": n, "status": 4xx|503, "error", "detail"}` (503 with
    `retry_after` seconds). The token comes in the handshake's `Authorization: Bearer` header;
    the same checks as the REST route apply. Other paths go to `app`.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "websocket" or scope["path"] != SOCKET_PATH:
            await self.app(scope, receive, send)
            return
        if (await receive())["type"] != "websocket.connect":
            return
        raw = _bearer(scope)
        token = await _token(raw) if raw is not None else None
        if token is None or token.scope not in REPORT_SCOPES:
            metrics.report_refused("unauthorized" if token is None else "forbidden")
            await send({"type": "websocket.close", "code": 4401 if token is None else 4403})
            return
        await send({"type": "websocket.accept"})
        peer = services.client_address((scope.get("client") or (None,))[0], _header(scope, b"x-forwarded-for"))
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message["type"] == "websocket.receive":
                token, reply = await _socket_report(message.get("text") or message.get("bytes") or "", token, peer)
                await send({"type": "websocket.send", "text": json.dumps(reply, separators=(",", ":"))})


async def _socket_report(frame: str | bytes, token: services.TokenInfo, peer: str | None) -> tuple:
    """Handle one report frame; return the (possibly newly bound) token and the reply frame."""
    seq = None
    try:
        if len(frame) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise services.RegistryError("too_large", "the frame is larger than the API's size limit.")
        try:
            data = json.loads(frame)
        except (ValueError, RecursionError):
            raise services.RegistryError("invalid_json", "the frame is not valid JSON.") from None
        if not isinstance(data, dict) or not isinstance(data.get("report"), dict):
            raise services.RegistryError("invalid_frame", 'a frame is {"seq": <number>, "report": {...}}.')
        seq = data.get("seq")
        try:  # no DNS lookup on the event loop: a name not resolved yet is checked in a thread
            report = services.parse_report(data["report"], token, peer, resolve=False)
        except services.RegistryError as exc:
            if exc.code != "lookup_needed":
                raise
            report = await sync_to_async(services.parse_report, thread_sensitive=False)(data["report"], token, peer)
        if token.scope == Token.Scope.SIDECAR and not token.host:
            token = await sync_to_async(_bind, thread_sensitive=False)(token, report.host)
            services.check_report(report, token, peer, resolve=False)
        endpoint_id = await asyncio.wrap_future(writer.submit(report, token.id))
    except services.RegistryError as exc:
        metrics.report_refused(exc.code)
        return token, {"seq": seq, "status": exc.status_code, "error": exc.code, "detail": exc.detail}
    except Overloaded as exc:
        metrics.report_refused("overloaded")
        reply = {"seq": seq, "status": 503, **overloaded_body(str(exc)), "retry_after": RETRY_AFTER_SECONDS}
        return token, reply
    return token, {"seq": seq, "status": 200, **reply_body(report, endpoint_id)}


def _bind(token: services.TokenInfo, host: str) -> services.TokenInfo:
    try:
        return services.bind_token(token, host)
    finally:
        _release_connection()


# Token lookups (reads) get threads of their own: in the shared default pool they queued behind
# first reports binding their tokens (writes waiting for SQLite's writer lock), and when 1,000
# sidecars connected at once, handshakes outlived daphne's handshake timeout and were dropped.
_lookups = ThreadPoolExecutor(max_workers=4, thread_name_prefix="token-lookup")


async def _token(raw: str) -> services.TokenInfo | None:
    hit, token = services.cached_token(raw)
    if not hit:
        token = await asyncio.get_running_loop().run_in_executor(_lookups, _lookup_token, raw)
    return token


async def _accept(scope, body: bytes) -> tuple[SidecarReport, int] | None:
    """The report and its token id when both are good; None sends the request to the REST route."""
    raw = _bearer(scope)
    if raw is None:
        return None
    token = await _token(raw)
    if token is None or token.scope not in REPORT_SCOPES or (token.scope == Token.Scope.SIDECAR and not token.host):
        return None  # refused, or a first report that binds its token: the REST route does those
    peer = services.client_address((scope.get("client") or (None,))[0], _header(scope, b"x-forwarded-for"))
    try:
        report = SidecarReport.model_validate_json(body)
        services.check_report(report, token, peer, resolve=False)  # no DNS lookup on the event loop
    except (ValidationError, services.RegistryError, ValueError):
        return None
    return report, token.id


def _lookup_token(raw: str) -> services.TokenInfo | None:
    try:
        return services.authenticate_token(raw, record_use=False)
    finally:
        _release_connection()


def _release_connection() -> None:
    """Close this thread's connection unless connections are meant to persist (CONN_MAX_AGE)."""
    if not connection.settings_dict.get("CONN_MAX_AGE"):
        connection.close()


def _header(scope, wanted: bytes) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return value.decode("latin-1")
    return None


def _bearer(scope) -> str | None:
    text = _header(scope, b"authorization")
    return text[7:] if text is not None and text.startswith("Bearer ") else None


async def _read_body(receive, limit: int) -> tuple[bytes, bool]:
    """Read the body, stopping once it is over `limit`; (body so far, whether more is coming)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = message.get("more_body", False)
        if not more or size > limit:
            return b"".join(chunks), more


def _replay(body: bytes, more: bool, receive):
    """A `receive` that gives the already-read body first, then continues with the real one."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replayed


async def _send_json(send, status: int, data: dict, *, retry_after: int | None = None) -> None:
    body = json.dumps(data, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
