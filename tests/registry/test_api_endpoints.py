"""REST: register, list, read and remove endpoints; auth; bad input never changes anything."""

from __future__ import annotations

import pytest
from django.test import Client

from registry import services
from registry.models import Endpoint, Host

URL = "/api/v1/endpoints"


def test_admin_token_registers_lists_reads_and_removes_an_endpoint(api, admin_token):
    created = api.post(URL, {"host": "gpu-01", "port": 11434, "name": "big box"}, admin_token)
    assert created.status_code == 201, created.content
    row = created.json()
    assert (row["host"], row["port"], row["name"], row["source"], row["status"]) == (
        "gpu-01",
        11434,
        "big box",
        "manual",
        "unknown",
    )
    assert row["url"] == "http://gpu-01:11434"

    listed = api.get(URL, admin_token).json()
    assert [r["id"] for r in listed] == [row["id"]]
    assert api.get(f"{URL}/{row['id']}", admin_token).json()["name"] == "big box"

    assert api.delete(f"{URL}/{row['id']}", admin_token).status_code == 204
    assert not Endpoint.objects.exists()
    assert api.get(f"{URL}/{row['id']}", admin_token).status_code == 404


def test_port_defaults_to_11434(api, admin_token):
    assert api.post(URL, {"host": "gpu-02"}, admin_token).json()["port"] == 11434


def test_staff_session_registers_with_a_csrf_token(operator_client):
    operator_client.get("/dashboard/")  # sets the CSRF cookie
    token = operator_client.cookies["csrftoken"].value
    response = operator_client.post(URL, '{"host": "gpu-03"}', content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 201, response.content
    assert Endpoint.objects.get().host.name == "gpu-03"


def test_staff_session_without_csrf_token_is_refused(operator_client):
    response = operator_client.post(URL, '{"host": "gpu-03"}', content_type="application/json")
    assert response.status_code == 403
    assert not Endpoint.objects.exists()


def test_staff_without_add_permission_may_not_register(api, db):
    from django.contrib.auth.models import User

    user = User.objects.create_user("watcher", password="x" * 12, is_staff=True)
    api.client.force_login(user)
    api.client.get("/dashboard/")
    response = api.client.post(
        URL,
        '{"host": "gpu-03"}',
        content_type="application/json",
        HTTP_X_CSRFTOKEN=api.client.cookies["csrftoken"].value,
    )
    assert response.status_code == 403
    assert "registry.add_endpoint" in response.json()["detail"]
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        ("http://gpu-01:11434/", "gpu-01", 11434),
        ("https://GPU-01.example.com:8080", "gpu-01.example.com", 8080),
        ("127.0.0.5", "127.0.0.5", 11434),
        ("[::1]:11500", "::1", 11500),
        ("::1", "::1", 11434),
        ("http://[::1]:1234/", "::1", 1234),
    ],
)
def test_host_input_is_normalised(api, admin_token, raw, host, port):
    response = api.post(URL, {"host": raw}, admin_token)
    assert response.status_code == 201, response.content
    assert (response.json()["host"], response.json()["port"]) == (host, port)


def test_registering_the_same_endpoint_twice_is_a_conflict(api, admin_token):
    assert api.post(URL, {"host": "gpu-01"}, admin_token).status_code == 201
    again = api.post(URL, {"host": "http://gpu-01:11434/"}, admin_token)
    assert again.status_code == 409
    assert again.json()["error"] == "already_registered"
    assert Endpoint.objects.count() == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "host"),
        ({"host": ""}, "host"),
        ({"host": "   "}, "host"),
        ({"host": "gpu 01"}, "host"),
        ({"host": "gpu-01/api"}, "path"),
        ({"host": "http://gpu-01:11434/api/tags"}, "path"),
        ({"host": "gpu-01", "port": 0}, "port"),
        ({"host": "gpu-01", "port": 70000}, "port"),
        ({"host": "gpu-01", "port": "abc"}, "port"),
        ({"host": "gpu-01", "port": True}, "port"),
        ({"host": "gpu-01", "name": "x" * 101}, "name"),
        ({"host": ["gpu-01"]}, "host"),
        ({"host": "8.8.8.8"}, "REGISTRY_ALLOWED_NETWORKS"),
        ({"host": "169.254.169.254"}, "REGISTRY_ALLOWED_NETWORKS"),
    ],
)
def test_bad_endpoint_input_gets_a_clear_error_and_changes_nothing(api, admin_token, body, field):
    response = api.post(URL, body, admin_token)
    assert response.status_code == 400, response.content
    payload = response.json()
    assert set(payload) == {"error", "detail"}
    assert field in payload["detail"]
    assert not Endpoint.objects.exists()
    assert not Host.objects.exists()


def test_a_body_that_is_not_json_is_refused(api, admin_token):
    response = api.post(URL, "{host: gpu-01", admin_token, raw=True)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"
    assert not Endpoint.objects.exists()


def test_a_body_over_256_kib_is_refused(api, admin_token):
    response = api.post(URL, {"host": "gpu-01", "name": "x" * 270_000}, admin_token)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize(("path", "status"), [("/api/v1/endpoints/999", 404), ("/api/v1/endpoints/abc", 400)])
def test_unknown_or_malformed_endpoint_id_is_a_clean_error(api, admin_token, path, status):
    services.register_endpoint("gpu-01")
    assert api.get(path, admin_token).status_code == status
    response = api.delete(path, admin_token)
    assert response.status_code == status
    assert set(response.json()) == {"error", "detail"}
    assert Endpoint.objects.count() == 1


def test_wrong_token_is_401(api, db):
    response = api.get(URL, "agc_adm_not-a-real-token")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_revoked_token_is_401(api, revoked_token):
    response = api.post(URL, {"host": "gpu-01"}, revoked_token)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert not Endpoint.objects.exists()


def test_no_credentials_is_401(api):
    assert api.get(URL).status_code == 401


def test_sidecar_token_on_an_admin_route_is_403(api, sidecar_token):
    response = api.post(URL, {"host": "gpu-01"}, sidecar_token)
    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert not Endpoint.objects.exists()


def test_openapi_description_and_docs_are_served(api):
    spec = api.get("/api/v1/openapi.json").json()
    assert "/api/v1/endpoints" in spec["paths"]
    assert "/api/v1/sidecar/report" in spec["paths"]
    assert api.get("/api/v1/docs").status_code == 200


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"host": "http://gpu-01:0/"}, "port"),
        ({"host": "http://user:secret@gpu-01:11434"}, "password"),
        ({"host": "gpu-01", "name": "x\u0000y"}, "control characters"),
    ],
)
def test_urls_with_port_zero_or_credentials_and_names_with_control_characters_are_refused(
    api, admin_token, body, words
):
    response = api.post(URL, body, admin_token)
    assert response.status_code == 400
    assert words in response.json()["detail"]
    assert not Endpoint.objects.exists()


def test_a_list_registers_every_endpoint_in_one_call(api, admin_token):
    body = [{"host": f"127.0.7.{i}", "name": f"rack {i}"} for i in range(1, 6)] + [{"host": "gpu-09", "port": 11500}]
    response = api.post(URL, body, admin_token)
    assert response.status_code == 201, response.content
    rows = response.json()
    assert [(r["address"], r["port"], r["source"]) for r in rows][-1] == ("gpu-09", 11500, "manual")
    assert Endpoint.objects.count() == 6
    assert sorted(r["id"] for r in rows) == sorted(Endpoint.objects.values_list("id", flat=True))


@pytest.mark.parametrize(
    ("entries", "status", "words"),
    [
        ([{"host": "gpu-01"}, {"host": "gpu 02"}], 400, "host"),
        ([{"host": "gpu-01"}, {"host": "http://gpu-01:11434"}], 400, "entries 0 and 1"),
        ([{"host": "gpu-01"}, {"host": "8.8.8.8"}], 400, "entry 1"),
        ([{"host": "gpu-01"}, {"host": "already"}], 409, "entry 1"),
        ([{"host": f"gpu-{i}"} for i in range(1001)], 400, "at most 1000"),
        ([], 400, "at least 1 item"),
    ],
)
def test_a_list_with_one_bad_entry_registers_nothing(api, admin_token, entries, status, words):
    services.register_endpoint("already")
    response = api.post(URL, entries, admin_token)
    assert response.status_code == status, response.content
    assert words in response.json()["detail"]
    assert list(Endpoint.objects.values_list("address", flat=True)) == ["already"]


def test_clients_filter_and_page_the_endpoint_list_and_the_snapshot(api, admin_token):
    for i in (10, 2, 1):
        services.register_endpoint(f"127.0.7.{i}", 11434, f"box {i}")
    Endpoint.objects.filter(address="127.0.7.2").update(status="unhealthy")
    Endpoint.objects.get(address="127.0.7.10").models.create(name="llama3:8b")

    sick = api.get(f"{URL}?status=unhealthy", admin_token)
    assert [r["address"] for r in sick.json()] == ["127.0.7.2"] and sick["X-Total-Count"] == "1"
    assert [r["address"] for r in api.get(f"{URL}?model=llama3", admin_token).json()] == ["127.0.7.10"]
    assert [r["address"] for r in api.get(f"{URL}?q=BOX%201", admin_token).json()] == ["127.0.7.1", "127.0.7.10"]
    page = api.get(f"{URL}?limit=2&offset=1", admin_token)
    assert len(page.json()) == 2 and page["X-Total-Count"] == "3"

    snapshot = api.get("/api/v1/snapshot?q=llama3&limit=10", admin_token).json()
    assert [r["address"] for r in snapshot["endpoints"]] == ["127.0.7.10"] and snapshot["total"] == 1


@pytest.mark.parametrize("query", ["status=sleepy", "limit=0", "limit=100000", "offset=-1", "limit=many"])
def test_a_bad_filter_or_page_is_a_clear_400(api, admin_token, query):
    response = api.get(f"{URL}?{query}", admin_token)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_input" and response.json()["detail"]


def test_a_logged_in_viewer_who_is_not_staff_is_refused_with_403_not_asked_to_log_in(viewer):
    client = Client()
    client.force_login(viewer)
    for reply in (
        client.get(URL),
        client.post(URL, {"host": "127.0.0.9"}, content_type="application/json"),
    ):
        assert reply.status_code == 403, reply.content
        assert reply.json()["error"] == "forbidden" and "not staff" in reply.json()["detail"]
    assert client.get("/api/v1/snapshot").status_code == 200  # reading the fleet is allowed
    assert not Endpoint.objects.exists()
