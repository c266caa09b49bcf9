"""No credentials at all is 401 with a JSON body, on every API route and method (never a CSRF 403)."""

from __future__ import annotations

import json

import pytest
from channels.testing import HttpCommunicator
from django.test import Client

from agentcom_site.asgi import application

ROUTES = [
    "/api/v1/endpoints",
    "/api/v1/endpoints/1",
    "/api/v1/snapshot",
    "/api/v1/sidecar/report",
    "/api/v1/no-such-route",
]
METHODS = ["get", "post", "put", "patch", "delete", "head", "options"]


def assert_unauthorized(response):
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    if response.content:  # HEAD has no body
        body = response.json()
        assert body["error"] == "unauthorized"
        assert "Authorization: Bearer <token>" in body["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("method", METHODS)
def test_no_credentials_is_401_on_every_route_and_method(route, method):
    client = Client(enforce_csrf_checks=True)
    if method in ("get", "head"):
        response = getattr(client, method)(route)
    else:
        response = getattr(client, method)(route, json.dumps({"host": "gpu-01"}), content_type="application/json")
    assert_unauthorized(response)


@pytest.mark.django_db
def test_a_stale_session_cookie_counts_as_no_credentials():
    client = Client(enforce_csrf_checks=True)
    client.cookies["sessionid"] = "expired-or-made-up"
    assert_unauthorized(client.post("/api/v1/endpoints", {"host": "gpu-01"}, content_type="application/json"))


@pytest.mark.django_db
def test_a_logged_in_operator_without_the_csrf_token_is_refused_with_403(operator_client):
    response = operator_client.post("/api/v1/endpoints", {"host": "gpu-01"}, content_type="application/json")
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"


@pytest.mark.django_db
def test_the_api_description_and_docs_need_no_credentials(client):
    assert client.get("/api/v1/openapi.json").status_code == 200
    assert client.get("/api/v1/docs").status_code == 200


@pytest.mark.django_db(transaction=True)
async def test_a_report_without_a_token_is_401_under_daphne_too():
    communicator = HttpCommunicator(
        application,
        "POST",
        "/api/v1/sidecar/report",
        body=json.dumps({"hostname": "gpu-01", "cpu_percent": 1, "ram_used_bytes": 1, "ram_total_bytes": 2}).encode(),
        headers=[(b"host", b"localhost"), (b"content-type", b"application/json")],
    )
    response = await communicator.get_response(timeout=5)
    assert response["status"] == 401
    assert json.loads(response["body"])["error"] == "unauthorized"
