"""GET /api/v1/route without Django's request cycle, when the answer needs no database.

A full Django request costs ~2.8 ms of CPU here; an agent fleet may ask for routes hundreds of
times a second. So `RouteFastPath` (ASGI, in front of Django) answers a request at once when:
its bearer token is in this process's token cache (agent or admin scope, its use recorded within
the last minute), the query is exactly `model` (and optionally `n`) and valid, and the routing
index is fresh and has ranked that model (services.ready_route). Anything else (no or another
credential, a session, a bad query, a stale index, a 404 or 503) goes to the REST route in
django-ninja unchanged, which answers it and warms what the next request needs: every error
has one implementation.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import orjson

from registry import services
from registry.models import Token

ROUTE_PATH = "/api/v1/route"
ROUTE_SCOPES = (Token.Scope.AGENT, Token.Scope.ADMIN)
_MODEL = re.compile(r"[^\x00-\x1f\x7f]{1,200}")  # the REST route's pattern and length
_N = re.compile(r"[0-9]{1,3}")


class RouteFastPath:
    """ASGI: answer ready routes here; pass every other request to `app`."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == ROUTE_PATH and scope["method"] == "GET":
            body = ready_answer(scope)
            if body is not None:
                headers = [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-content-type-options", b"nosniff"),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def ready_answer(scope) -> bytes | None:
    """The JSON of a 200 answer when nothing needs Django or the database; else None."""
    token = _token(scope)
    if token is None:
        return None
    query = _query(scope.get("query_string", b""))
    if query is None:
        return None
    reply = services.ready_route(*query)
    return orjson.dumps(reply) if reply is not None else None


def _token(scope) -> services.TokenInfo | None:
    raw = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            if raw is not None:
                return None  # two Authorization headers: let Django judge
            raw = value.decode("latin-1")
    if raw is None or not raw.startswith("Bearer "):
        return None
    hit, token = services.cached_token(raw[7:])
    if not hit or token is None or token.scope not in ROUTE_SCOPES or not services.token_use_noted(token.id):
        return None
    return token


def _query(raw: bytes) -> tuple[str, int] | None:
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    params = dict(pairs)
    if len(params) != len(pairs) or not set(params) <= {"model", "n"} or "model" not in params:
        return None
    model, n = params["model"], params.get("n", "3")
    if not _MODEL.fullmatch(model) or not _N.fullmatch(n):
        return None
    return model, int(n)
