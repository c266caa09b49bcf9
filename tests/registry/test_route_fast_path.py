"""Routes answered from memory on the event loop (registry/routeasgi.py) say exactly what the REST
route says, and anything unusual still goes through Django."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from registry import services, wire
from registry.models import Token
from registry.routeasgi import RouteFastPath
from tests.registry.test_route import endpoint, host

URL = "/api/v1/route"


def call(query: str, token: str | None) -> tuple[int | None, dict | None]:
    """(status, body) when the fast path answered; (None, None) when it passed the request on."""
    sent, passed = [], []

    async def app(scope, receive, send):
        passed.append(scope)

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    scope = {"type": "http", "method": "GET", "path": URL, "query_string": query.encode(), "headers": headers}
    asyncio.run(RouteFastPath(app)(scope, receive, send))
    if passed:
        return None, None
    return sent[0]["status"], orjson.loads(sent[1]["body"])


@pytest.fixture
def fleet(db, settings):
    settings.ROUTE_CACHE_SECONDS = 3600
    for name in ("gpu-a", "gpu-b"):
        endpoint(host(name), {"llama3:latest": {}})


def test_a_warm_route_is_answered_on_the_event_loop_as_the_rest_route_answers_it(api, agent_token, fleet):
    assert call("model=llama3", agent_token) == (None, None)  # nothing known yet: Django
    rest = api.get(f"{URL}?model=llama3", agent_token).json()
    status, fast = call("model=llama3&n=2", agent_token)
    assert status == 200
    wire.Route.model_validate(fast)
    assert len(fast["routes"]) == 2
    assert {r["host"] for r in fast["routes"]} == {r["host"] for r in rest["routes"]} == {"gpu-a", "gpu-b"}
    assert fast["as_of"] == rest["as_of"]  # the same index


@pytest.mark.parametrize(
    "query", ["model=llama3&n=0", "model=llama3&n=abc", "n=2", "model=", "model=llama3&x=1", "model=llama3&model=a"]
)
def test_unusual_queries_go_to_django(api, agent_token, fleet, query):
    api.get(f"{URL}?model=llama3", agent_token)
    assert call(query, agent_token) == (None, None)


def test_other_credentials_and_unknown_models_go_to_django(api, agent_token, sidecar_token, fleet):
    api.get(f"{URL}?model=llama3", agent_token)
    assert call("model=llama3", None) == (None, None)  # a session, or nothing: Django decides
    assert call("model=llama3", sidecar_token) == (None, None)  # refused there with 403
    assert call("model=llama3", "agc_age_made-up") == (None, None)
    assert call("model=gemma2", agent_token) == (None, None)  # the 404 has one implementation


def test_a_revoked_token_is_not_served_from_memory(api, agent_token, fleet):
    api.get(f"{URL}?model=llama3", agent_token)
    assert call("model=llama3", agent_token)[0] == 200
    services.revoke_tokens(Token.objects.filter(scope="agent").values_list("id", flat=True))
    assert call("model=llama3", agent_token) == (None, None)
    assert api.get(f"{URL}?model=llama3", agent_token).status_code == 401
