"""HTTPS endpoints end to end through the hub: registration keeps the scheme, probes verify the
certificate, and an endpoint's Authorization header never comes back out of any surface."""

from __future__ import annotations

import json
import logging

import pytest
from channels.db import database_sync_to_async as sync_to_async
from django.contrib.auth.models import User

from devtools.tls import TestCA, self_signed
from registry import services
from registry.models import Endpoint, Event
from registry.schemas import SidecarReport

SECRET = "Bearer hub-secret-9c41d7e2"
ENDPOINTS = "/api/v1/endpoints"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    ca = TestCA.create(folder)
    return {
        "ca": ca.cert_path,
        "good": ca.issue(folder, ["127.0.0.1", "localhost"]),
        "wrong": self_signed(folder, ["127.0.0.1"]),
    }


@pytest.fixture
def trusting(settings, certs):
    """The hub trusts the test CA (PROBE_CA_BUNDLE)."""
    settings.PROBE_CA_BUNDLE = certs["ca"]
    return certs


def serve_https(fleet, cert, **options) -> int:
    options.setdefault("models", ["llama3:8b"])
    return fleet.add(certfile=cert[0], keyfile=cert[1], **options)[1]


def test_an_https_url_is_registered_with_its_scheme_and_probed_over_tls(api, admin_token, fake_fleet, trusting):
    port = serve_https(fake_fleet, trusting["good"], loaded=["llama3:8b"])
    reply = api.post(ENDPOINTS, {"host": f"https://127.0.0.1:{port}/", "name": "secure"}, token=admin_token)
    assert reply.status_code == 201, reply.content
    row = reply.json()
    assert (row["scheme"], row["url"], row["has_auth"]) == ("https", f"https://127.0.0.1:{port}", False)
    services.probe([row["id"]])
    row = api.get(f"{ENDPOINTS}/{row['id']}", token=admin_token).json()
    assert (row["status"], row["last_error"]) == ("healthy", "")
    assert [(m["name"], m["loaded"]) for m in row["models"]] == [("llama3:8b", True)]


def test_a_wrong_certificate_makes_the_endpoint_unhealthy_saying_it_is_not_trusted(
    api, admin_token, fake_fleet, trusting
):
    port = serve_https(fake_fleet, trusting["wrong"])
    endpoint_id = api.post(ENDPOINTS, {"host": f"https://127.0.0.1:{port}"}, token=admin_token).json()["id"]
    services.probe([endpoint_id])
    services.probe([endpoint_id])
    endpoint = Endpoint.objects.get(id=endpoint_id)
    assert (endpoint.status, endpoint.last_error) == ("unhealthy", "certificate not trusted")
    assert not endpoint.models.exists()


def test_a_bare_host_is_plain_http_and_still_probed_that_way(api, admin_token, fake_fleet, trusting):
    host, port = fake_fleet.add(models=["mistral:7b"])
    row = api.post(ENDPOINTS, {"host": host, "port": port}, token=admin_token).json()
    assert (row["scheme"], row["url"]) == ("http", f"http://127.0.0.1:{port}")
    services.probe([row["id"]])
    assert Endpoint.objects.get(id=row["id"]).status == "healthy"


@pytest.mark.parametrize("host", ["ftp://127.0.0.1:21", "HTTPS://127.0.0.1:443", "wss://127.0.0.1:11434"])
def test_a_url_of_another_scheme_is_refused_with_a_json_error(api, admin_token, host):
    reply = api.post(ENDPOINTS, {"host": host}, token=admin_token)
    assert reply.status_code == 400
    assert reply["Content-Type"].startswith("application/json")
    assert reply.json()["error"] == "invalid_input"
    assert "host" in reply.json()["detail"]
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize("value", [f"{SECRET}\r\nX-Injected: 1", f" {SECRET}", 7, "x" * 2049])
def test_an_authorization_value_that_is_not_one_header_value_is_refused_without_echoing_it(api, admin_token, value):
    reply = api.post(ENDPOINTS, {"host": "127.0.0.1", "authorization": value}, token=admin_token)
    assert reply.status_code == 400, reply.content
    assert "authorization" in reply.json()["detail"]
    assert SECRET not in reply.content.decode() and "xxxxxxxx" not in reply.content.decode()
    assert not Endpoint.objects.exists()


def test_a_bulk_registration_keeps_each_entrys_scheme_and_header(api, admin_token):
    body = [
        {"host": "https://127.0.0.1:9443", "authorization": SECRET},
        {"host": "127.0.0.1", "port": 11434},
    ]
    reply = api.post(ENDPOINTS, body, token=admin_token)
    assert reply.status_code == 201, reply.content
    assert [(r["scheme"], r["has_auth"]) for r in reply.json()] == [("https", True), ("http", False)]
    assert SECRET not in reply.content.decode()
    assert Endpoint.objects.get(port=9443).authorization == SECRET


def test_the_header_is_sent_with_the_probes_of_an_endpoint_behind_a_proxy(api, admin_token, fake_fleet, trusting):
    port = serve_https(fake_fleet, trusting["good"], auth=SECRET)
    guarded = api.post(ENDPOINTS, {"host": f"https://127.0.0.1:{port}", "authorization": SECRET}, token=admin_token)
    bare = api.post(ENDPOINTS, {"host": f"https://localhost:{port}"}, token=admin_token)
    services.probe([guarded.json()["id"], bare.json()["id"]])
    assert Endpoint.objects.get(id=guarded.json()["id"]).status == "healthy"
    assert Endpoint.objects.get(id=bare.json()["id"]).last_error == "HTTP 401"


@pytest.fixture
def admin_client(client, db):
    client.force_login(User.objects.create_superuser("root", "", "pw-for-tests"))
    return client


def test_the_secret_never_leaves_the_hub_by_rest_snapshot_admin_or_log(
    api, admin_token, admin_client, fake_fleet, trusting, caplog
):
    caplog.set_level(logging.DEBUG)
    port = serve_https(fake_fleet, trusting["good"], auth="Bearer something-else")  # refuses our header
    wrong_port = serve_https(fake_fleet, trusting["wrong"])
    seen = []
    created = api.post(ENDPOINTS, {"host": f"https://127.0.0.1:{port}", "authorization": SECRET}, token=admin_token)
    other = api.post(ENDPOINTS, {"host": f"https://127.0.0.1:{wrong_port}", "authorization": SECRET}, token=admin_token)
    seen += [created, other]
    endpoint_id = created.json()["id"]
    services.probe(None)  # a failing probe (401, untrusted certificate) is where a header might be logged
    seen.append(api.post(ENDPOINTS, {"host": f"https://127.0.0.1:{port}"}, token=admin_token))  # 409
    seen.append(api.get(ENDPOINTS, token=admin_token))
    seen.append(api.get(f"{ENDPOINTS}/{endpoint_id}", token=admin_token))
    seen.append(api.get("/api/v1/snapshot", token=admin_token))
    seen.append(admin_client.get("/admin/registry/endpoint/"))
    seen.append(admin_client.get(f"/admin/registry/endpoint/{endpoint_id}/change/"))
    seen.append(admin_client.get("/api/v1/openapi.json"))
    assert created.json()["has_auth"] is True
    assert Endpoint.objects.get(id=endpoint_id).last_error == "HTTP 401"
    for response in seen:
        assert SECRET not in response.content.decode(), response.request["PATH_INFO"]
    assert "hub-secret" not in caplog.text
    assert any("401" in r.getMessage() for r in caplog.records)  # the probe's failures were logged


@pytest.mark.django_db(transaction=True)
async def test_the_secret_never_appears_in_a_dashboard_frame(operator):
    from tests.dashboard.test_consumer import connect, receive, receive_until

    communicator = await connect(operator)
    try:
        await receive_until(communicator, "snapshot")
        frame = {"type": "register_llm_endpoint", "host": "https://127.0.0.1:9443", "authorization": SECRET}
        await communicator.send_json_to(frame)
        texts = []
        while True:
            text = await communicator.receive_from(timeout=3)
            texts.append(text)
            if json.loads(text)["type"] == "llm_endpoint_registered":
                break
        registered = json.loads(texts[-1])["endpoint"]
        assert (registered["scheme"], registered["has_auth"]) == ("https", True)
        await communicator.send_json_to({"type": "request_snapshot"})
        snapshot = await receive(communicator)
        while snapshot["type"] != "snapshot":
            snapshot = await receive(communicator)
        texts.append(json.dumps(snapshot))
        assert [e["has_auth"] for e in snapshot["endpoints"]] == [True]
        assert not any(SECRET in text for text in texts)
        stored = await sync_to_async(lambda: Endpoint.objects.get().authorization)()
        assert stored == SECRET
    finally:
        await communicator.disconnect()


def test_a_sidecar_advertising_https_registers_it_so_and_the_endpoint_follows_its_scheme(db):
    def report(url: str) -> SidecarReport:
        return SidecarReport(hostname="gpu-02", ollama_url=url, cpu_percent=5, ram_used_bytes=1, ram_total_bytes=2)

    endpoint_id = services.record_report(report("https://127.0.0.1:11434"))
    endpoint = Endpoint.objects.get(id=endpoint_id)
    assert (endpoint.source, endpoint.scheme, endpoint.url) == ("auto", "https", "https://127.0.0.1:11434")
    services.forget_process_caches()
    assert services.record_report(report("http://127.0.0.1:11434")) == endpoint_id
    assert Endpoint.objects.get(id=endpoint_id).scheme == "http"
    (change,) = Event.objects.filter(endpoint_id=endpoint_id, kind="changed")
    assert change.detail == {"by": "sidecar of 127.0.0.1", "fields": {"scheme": ["https", "http"]}}


def test_an_auto_endpoints_scheme_is_not_editable_in_the_admin(admin_client):
    report = SidecarReport(
        hostname="gpu-02", ollama_url="https://127.0.0.1:11434", cpu_percent=5, ram_used_bytes=1, ram_total_bytes=2
    )
    endpoint_id = services.record_report(report)
    page = admin_client.get(f"/admin/registry/endpoint/{endpoint_id}/change/").content.decode()
    assert "Follows the URL its sidecar advertises" in page
    admin_client.post(
        f"/admin/registry/endpoint/{endpoint_id}/change/", {"port": "11434", "name": "", "scheme": "http"}
    )
    assert Endpoint.objects.get(id=endpoint_id).scheme == "https"  # a disabled field keeps its value


def test_a_sidecars_change_of_scheme_never_changes_a_manual_endpoint(db):
    manual, _ = services.register_endpoint("https://127.0.0.1:11434")
    report = SidecarReport(
        hostname="gpu-02", ollama_url="http://127.0.0.1:11434", cpu_percent=5, ram_used_bytes=1, ram_total_bytes=2
    )
    assert services.record_report(report) == manual.id
    assert Endpoint.objects.get(id=manual.id).scheme == "https"


def test_admin_adds_an_https_endpoint_and_sets_keeps_and_removes_its_header(admin_client):
    added = admin_client.post(
        "/admin/registry/endpoint/add/",
        {"address": "https://127.0.0.1:9443", "port": "11434", "name": "tls", "authorization_header": SECRET},
    )
    assert added.status_code == 302, added.content.decode()[:2000]
    endpoint = Endpoint.objects.get()
    assert (endpoint.scheme, endpoint.port, endpoint.authorization) == ("https", 9443, SECRET)
    change = f"/admin/registry/endpoint/{endpoint.id}/change/"
    page = admin_client.get(change).content.decode()
    assert 'type="password"' in page and SECRET not in page and "One is stored now." in page

    kept = admin_client.post(change, {"port": "9443", "name": "renamed", "scheme": "https", "authorization_header": ""})
    assert kept.status_code == 302, kept.content.decode()[:2000]
    endpoint.refresh_from_db()
    assert (endpoint.name, endpoint.authorization) == ("renamed", SECRET)

    admin_client.post(
        change, {"port": "9443", "name": "renamed", "scheme": "http", "authorization_header": "Basic eA=="}
    )
    endpoint.refresh_from_db()
    assert (endpoint.scheme, endpoint.authorization) == ("http", "Basic eA==")

    admin_client.post(change, {"port": "9443", "name": "renamed", "scheme": "http", "remove_authorization": "on"})
    endpoint.refresh_from_db()
    assert endpoint.authorization == ""
    # Each change is on the endpoint's timeline, naming the fields and who changed them, never the header.
    changes = Event.objects.filter(endpoint_id=endpoint.id, kind="changed").order_by("id")
    assert [e.detail["fields"] for e in changes] == [
        {"name": ["tls", "renamed"]},
        {"scheme": ["https", "http"], "authorization": "set"},
        {"authorization": "removed"},
    ]
    assert all(e.detail["by"].startswith("user ") for e in changes)
    assert SECRET not in json.dumps([e.detail for e in changes]) and "Basic eA==" not in json.dumps(
        [e.detail for e in changes]
    )
    listing = admin_client.get("/admin/registry/endpoint/").content.decode()
    assert '<td class="field-auth_set"><img src="/static/admin/img/icon-no.svg" alt="False"></td>' in listing


def test_the_openapi_description_marks_the_header_write_only(api, admin_token):
    schema = api.get("/api/v1/openapi.json").json()
    endpoint_in = schema["components"]["schemas"]["EndpointIn"]["properties"]["authorization"]
    assert json.dumps(endpoint_in).count('"writeOnly": true') == 1
    row = schema["components"]["schemas"]["EndpointRow"]["properties"]
    assert "authorization" not in row and row["has_auth"]["type"] == "boolean"
