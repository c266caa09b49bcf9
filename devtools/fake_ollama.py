"""A fleet of fake Ollama servers in one process, switchable live, for tests and demos.

Each endpoint is a real listening socket that speaks Ollama's documented replies
(`/`, `/api/version`, `/api/tags`, `/api/ps`). A control API on its own port lets other
processes list, add, change and remove endpoints while the fleet runs:

    GET    /endpoints                      -> [{host, port, url, mode, delay, period, version, models, loaded, tls}]
    POST   /endpoints                      {host?, port?, models?, loaded?, mode?, delay?, period?, version?,
                                            certfile?, keyfile?, auth?}
    PATCH  /endpoints/{host}:{port}        {mode?, delay?, period?, version?, models?, loaded?, auth?}
    DELETE /endpoints/{host}:{port}

TLS: an endpoint given `certfile` and `keyfile` (PEM paths; CLI `--cert`/`--key`) serves HTTPS
and its url says https://. An endpoint given `auth` answers 401 to any request whose
Authorization header is not exactly that value (changeable with PATCH).

Modes: healthy; slow (each reply after `delay` s); hang (accept, never answer); http500;
invalid_json; oversized (2 MiB of valid JSON, chunked, no Content-Length); redirect (302 to
the cloud metadata address); refused (the socket stops listening); no_ps (404 on /api/ps like
old Ollama); flapping (healthy and http500 alternating every `period` s). Model names are
rendered exactly as given (pass "llama3:8b" to get a tag).

    python -m devtools.fake_ollama --count 1000 --address-base 127.0.10.1 --port 11434
    python -m devtools.fake_ollama --count 20 --base-port 21000 --models llama3,mistral
    python -m devtools.fake_ollama --spec demo.json --control-port 11500

A spec file is `{"endpoints": [{"host", "port", "models", "loaded", "mode", "delay", "period", ...}]}`
(or just the list). The CLI prints one `http://host:port` per endpoint, then `control: URL` last.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import re
import resource
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from aiohttp import web

logger = logging.getLogger(__name__)

MODES = ("healthy", "slow", "hang", "http500", "invalid_json", "oversized", "redirect", "refused", "no_ps", "flapping")
DEFAULT_VERSION = "0.5.7"
REDIRECT_TARGET = "http://169.254.169.254/latest/meta-data/"  # what an attacker would aim at
MODIFIED_AT = "2024-11-12T09:41:27.302595621Z"
_OVERSIZED_BYTES = 2 * 1024 * 1024


@dataclass
class FakeEndpoint:
    """One fake Ollama server and its current behaviour."""

    host: str
    port: int
    models: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    mode: str = "healthy"
    delay: float = 1.0  # seconds, for mode "slow"
    period: float = 10.0  # seconds, for mode "flapping"
    version: str = DEFAULT_VERSION
    certfile: str = ""  # with keyfile: serve HTTPS with this certificate
    keyfile: str = ""
    auth: str = ""  # when set, the Authorization header every request must carry (else 401)
    server: asyncio.Server | None = None
    _tags: bytes | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.certfile else 'http'}://{host}:{self.port}"

    def current_mode(self) -> str:
        """Return the mode in force now (flapping alternates healthy and http500)."""
        if self.mode != "flapping":
            return self.mode
        return "healthy" if int(time.time() / max(self.period, 0.001)) % 2 == 0 else "http500"

    def tags_body(self) -> bytes:
        if self._tags is None:
            self._tags = json.dumps({"models": [render_model(name) for name in self.models]}).encode()
        return self._tags

    def ps_body(self) -> bytes:
        expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        running = []
        for name in self.loaded:
            entry = render_model(name)
            del entry["modified_at"]
            entry["details"]["parent_model"] = ""
            running.append({**entry, "expires_at": expires, "size_vram": entry["size"]})
        return json.dumps({"models": running}).encode()

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "url": self.url,
            "mode": self.mode,
            "delay": self.delay,
            "period": self.period,
            "version": self.version,
            "models": list(self.models),
            "loaded": list(self.loaded),
            "tls": bool(self.certfile),
            "auth": bool(self.auth),  # whether one is required, not what it is
        }


def render_model(name: str) -> dict[str, Any]:
    """Render `name` the way Ollama's /api/tags does, with stable made-up details."""
    base, _, tag = name.partition(":")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)b", tag.lower())
    billions = float(match.group(1)) if match else 7.2
    family = re.sub(r"[\d.]+$", "", base) or base
    return {
        "name": name,
        "model": name,
        "modified_at": MODIFIED_AT,
        "size": int(billions * 0.57e9),  # roughly a Q4_0 file
        "digest": hashlib.sha256(name.encode()).hexdigest(),
        "details": {
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": f"{billions:g}B",
            "quantization_level": "Q4_0",
        },
    }


@functools.cache
def _oversized_body() -> bytes:
    """Return a valid /api/tags reply a little over 2 MiB."""
    model = render_model("bloat:70b")
    count = _OVERSIZED_BYTES // len(json.dumps(model)) + 1
    return json.dumps({"models": [model] * count}).encode()


async def _stream_oversized(request: web.BaseRequest) -> web.StreamResponse:
    """Send 2 MiB of valid JSON chunked, with no Content-Length: the client must count."""
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    body = _oversized_body()
    with contextlib.suppress(ConnectionResetError):  # the client is expected to hang up part way
        for start in range(0, len(body), 64 * 1024):
            await response.write(body[start : start + 64 * 1024])
        await response.write_eof()
    return response


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json")


class FakeFleet:
    """Serve many fake Ollama endpoints from an event loop in a background thread."""

    def __init__(self, control_host: str = "127.0.0.1", control_port: int = 0) -> None:
        self._control_addr = (control_host, control_port)
        self._endpoints: dict[tuple[str, int], FakeEndpoint] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: web.Server | None = None
        self._control: web.AppRunner | None = None
        self.control_port = 0

    # -- synchronous API (any thread) --------------------------------------------------------

    @property
    def control_url(self) -> str:
        return f"http://{self._control_addr[0]}:{self.control_port}"

    def start(self) -> Self:
        """Start the event loop thread, the control API, and return self."""
        _raise_fd_limit()
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-ollama", daemon=True)
        self._thread.start()
        ready.wait()
        try:
            self._call(self._start_control())
        except Exception:
            self.stop()  # e.g. the control port is taken: do not leave the loop thread behind
            raise
        return self

    def stop(self) -> None:
        """Close every socket and stop the loop thread."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = self._thread = None

    def add(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: list[str] | None = None,
        loaded: list[str] | None = None,
        mode: str = "healthy",
        **options: Any,
    ) -> tuple[str, int]:
        """Serve a new endpoint (port 0 picks a free one) and return its (host, port)."""
        spec = {"host": host, "port": port, "models": models or [], "loaded": loaded or [], "mode": mode}
        return self._call(self.add_async(**spec, **options))

    def set(self, host: str, port: int, **changes: Any) -> None:
        """Change an endpoint's mode, delay, period, version, models or loaded models."""
        self._call(self.set_async(host, port, **changes))

    def remove(self, host: str, port: int) -> None:
        """Stop serving an endpoint."""
        self._call(self.remove_async(host, port))

    def endpoints(self) -> list[dict[str, Any]]:
        """List every endpoint with its host, port, url, mode, models and loaded models."""
        return self._call(self._listing())

    def url(self, host: str, port: int) -> str:
        return self._endpoints[(host, port)].url

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the fake fleet is not running; call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # -- the loop side -------------------------------------------------------------------------

    async def add_async(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> tuple[str, int]:
        mode = options.get("mode", "healthy")
        _check_mode(mode)
        ep = FakeEndpoint(host=host, port=port, **options)
        await self._listen(ep)
        if mode == "refused":
            ep.server.close()  # keep the port it got, refuse connections until switched back
            ep.server = None
        self._endpoints[(ep.host, ep.port)] = ep
        return ep.host, ep.port

    async def set_async(self, host: str, port: int, **changes: Any) -> None:
        ep = self._endpoints[(host, port)]
        if "mode" in changes:
            _check_mode(changes["mode"])
        for key in _CHANGEABLE:
            if key in changes:
                setattr(ep, key, changes[key])
        ep._tags = None
        if ep.mode == "refused" and ep.server is not None:
            ep.server.close()
            ep.server = None
        elif ep.mode != "refused" and ep.server is None:
            try:
                await self._listen(ep)
            except OSError:
                ep.mode = "refused"  # someone else took the port meanwhile: stay truthful
                raise

    async def remove_async(self, host: str, port: int) -> None:
        ep = self._endpoints.pop((host, port))
        if ep.server is not None:
            ep.server.close()

    async def _listen(self, ep: FakeEndpoint) -> None:
        if self._http is None:
            self._http = web.Server(self._handle, handler_cancellation=True, access_log=None)
        tls = _server_context(ep.certfile, ep.keyfile) if ep.certfile else None
        ep.server = await asyncio.get_running_loop().create_server(self._http, ep.host, ep.port, backlog=1024, ssl=tls)
        ep.host, ep.port = ep.server.sockets[0].getsockname()[:2]

    async def _listing(self) -> list[dict[str, Any]]:
        return [ep.to_dict() for ep in self._endpoints.values()]

    async def _shutdown(self) -> None:
        for ep in self._endpoints.values():
            if ep.server is not None:
                ep.server.close()
        self._endpoints.clear()
        if self._http is not None:
            await self._http.shutdown(timeout=1)
        if self._control is not None:
            await self._control.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        ep = self._endpoints.get(tuple(sockname[:2])) if sockname else None
        mode = ep.current_mode() if ep else "refused"
        if mode == "refused":  # a kept-alive connection to a socket that stopped listening
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        if ep.auth and request.headers.get("Authorization") != ep.auth:
            return _json({"error": "unauthorized"}, status=401)
        if mode == "hang":
            await asyncio.Event().wait()  # cancelled when the client gives up
        if mode == "slow":
            await asyncio.sleep(ep.delay)
        if mode == "http500":
            return _json({"error": "something went wrong"}, status=500)
        if mode == "redirect":
            return web.Response(status=302, headers={"Location": REDIRECT_TARGET})
        if mode == "oversized" and request.path.startswith("/api/"):
            return await _stream_oversized(request)
        return self._reply(ep, mode, request.path)

    @staticmethod
    def _reply(ep: FakeEndpoint, mode: str, path: str) -> web.Response:
        if path == "/":
            return web.Response(text="Ollama is running")
        if mode == "invalid_json" and path.startswith("/api/"):
            return web.Response(text="<html><body>upstream error</body></html>", content_type="text/html")
        if path == "/api/version":
            return _json({"version": ep.version})
        if path == "/api/tags":
            return web.Response(body=ep.tags_body(), content_type="application/json")
        if path == "/api/ps" and mode != "no_ps":
            return web.Response(body=ep.ps_body(), content_type="application/json")
        return web.Response(status=404, text="404 page not found")

    # -- control API ---------------------------------------------------------------------------

    async def _start_control(self) -> None:
        app = web.Application()
        app.router.add_get("/endpoints", self._list_view)
        app.router.add_post("/endpoints", self._add_view)
        app.router.add_patch("/endpoints/{key}", self._patch_view)
        app.router.add_delete("/endpoints/{key}", self._delete_view)
        self._control = web.AppRunner(app, access_log=None)
        await self._control.setup()
        await web.TCPSite(self._control, *self._control_addr).start()
        self.control_port = self._control.addresses[0][1]

    async def _list_view(self, request: web.Request) -> web.Response:
        return _json(await self._listing())

    async def _add_view(self, request: web.Request) -> web.Response:
        try:
            spec = _spec(await request.json(), ("host", "port", "certfile", "keyfile", *_CHANGEABLE))
            host, port = await self.add_async(**spec)
        except (ValueError, TypeError, OSError) as exc:
            return _json({"error": "invalid", "detail": str(exc)}, status=400)
        return _json(self._endpoints[(host, port)].to_dict(), status=201)

    async def _patch_view(self, request: web.Request) -> web.Response:
        key = _key(request.match_info["key"])
        if key not in self._endpoints:
            return _json({"error": "not_found", "detail": "no such endpoint"}, status=404)
        try:
            await self.set_async(*key, **_spec(await request.json(), _CHANGEABLE))
        except (ValueError, TypeError, OSError) as exc:
            return _json({"error": "invalid", "detail": str(exc)}, status=400)
        return _json(self._endpoints[key].to_dict())

    async def _delete_view(self, request: web.Request) -> web.Response:
        key = _key(request.match_info["key"])
        if key not in self._endpoints:
            return _json({"error": "not_found", "detail": "no such endpoint"}, status=404)
        await self.remove_async(*key)
        return web.Response(status=204)


_CHANGEABLE = ("mode", "delay", "period", "version", "models", "loaded", "auth")


@functools.cache
def _server_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """One server context per certificate (a fleet of 1,000 endpoints may share one)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "host": (str,),
    "port": (int,),
    "mode": (str,),
    "version": (str,),
    "delay": (int, float),
    "period": (int, float),
    "models": (list,),
    "loaded": (list,),
    "certfile": (str,),
    "keyfile": (str,),
    "auth": (str,),
}


def _spec(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Validate a control API body: known keys of the right JSON types only."""
    if not isinstance(body, dict):
        raise TypeError("body must be a JSON object")
    unknown = set(body) - set(allowed)
    if unknown:
        raise ValueError(f"unknown fields: {', '.join(sorted(unknown))}")
    for key, value in body.items():
        if not isinstance(value, _FIELD_TYPES[key]) or isinstance(value, bool):
            raise TypeError(f"{key} has the wrong type")
        if isinstance(value, list) and not all(isinstance(name, str) for name in value):
            raise TypeError(f"{key} must be a list of model names")
    return body


def _key(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else -1


def _raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: 1,000 endpoints need > 1,024 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def fake_fleet(**kwargs: Any) -> Iterator[FakeFleet]:
    """Run a FakeFleet for the duration of a `with` block (handy as a pytest fixture body)."""
    fleet = FakeFleet(**kwargs).start()
    try:
        yield fleet
    finally:
        fleet.stop()


def _cli_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    specs: list[dict[str, Any]] = []
    if args.spec:
        data = json.loads(Path(args.spec).read_text())
        specs.extend(data["endpoints"] if isinstance(data, dict) else data)
    count = args.count if args.count is not None else (0 if args.spec else 1)
    models = [m for m in args.models.split(",") if m]
    loaded = [m for m in args.loaded.split(",") if m]
    for i in range(count):
        spec = {"models": models, "loaded": loaded, "mode": args.mode}
        if args.cert:
            spec.update(certfile=args.cert, keyfile=args.key)
        if args.auth:
            spec.update(auth=args.auth)
        if args.address_base:
            spec.update(host=str(ipaddress.ip_address(args.address_base) + i), port=args.port)
        else:
            spec.update(host=args.address, port=args.base_port + i)
        specs.append(spec)
    return specs


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devtools.fake_ollama", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, help="number of endpoints (default 1, or 0 with --spec)")
    parser.add_argument("--address-base", help="first loopback address, one endpoint per address")
    parser.add_argument("--port", type=int, default=11434, help="port used with --address-base")
    parser.add_argument("--base-port", type=int, default=21000, help="first port, one endpoint per port")
    parser.add_argument("--address", default="127.0.0.1", help="address used with --base-port")
    parser.add_argument("--models", default="llama3:8b,mistral:7b")
    parser.add_argument("--loaded", default="", help="comma-separated subset of --models shown in /api/ps")
    parser.add_argument("--mode", default="healthy", choices=MODES)
    parser.add_argument("--control-port", type=int, default=11500)
    parser.add_argument("--control-host", default="127.0.0.1")
    parser.add_argument("--spec", help="JSON file listing endpoints")
    parser.add_argument("--cert", help="PEM certificate (chain): serve HTTPS (with --key)")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--auth", help="Authorization header value every request must carry (else 401)")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    logging.basicConfig(level=logging.WARNING)

    fleet = FakeFleet(args.control_host, args.control_port).start()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for spec in _cli_specs(args):
            host, port = fleet.add(**spec)
            print(fleet.url(host, port), flush=True)
        print(f"control: {fleet.control_url}", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fleet.stop()


if __name__ == "__main__":
    main()
