"""Django admin: operators manage endpoints, hosts and tokens; snapshots are read-only."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User

from registry import services
from registry.models import Endpoint, Event, ResourceSnapshot, Token
from registry.schemas import SidecarReport


@pytest.fixture
def admin_client(client, db):
    client.force_login(User.objects.create_superuser("root", "", "pw-for-tests"))
    return client


def test_endpoint_list_shows_status_host_port_name_models_source_and_last_checked(admin_client):
    endpoint, _ = services.register_endpoint("gpu-01", 11434, "big box")
    endpoint.models.create(name="llama3")
    endpoint.models.create(name="mistral")
    page = admin_client.get("/admin/registry/endpoint/").content.decode()
    for text in ("unknown", "gpu-01", "11434", "big box", "manual", "Last checked"):
        assert text.lower() in page.lower(), text
    assert '<td class="field-model_count">2</td>' in page


def test_endpoint_list_filters_by_status_and_source_and_searches_host(admin_client):
    services.register_endpoint("gpu-01")
    services.register_endpoint("gpu-02", source="auto")
    Endpoint.objects.filter(host__name="gpu-02").update(status="healthy")
    assert "gpu-01" not in admin_client.get("/admin/registry/endpoint/?status__exact=healthy").content.decode()
    assert "gpu-02" in admin_client.get("/admin/registry/endpoint/?source__exact=auto").content.decode()
    searched = admin_client.get("/admin/registry/endpoint/?q=gpu-02").content.decode()
    assert "gpu-02" in searched and "gpu-01" not in searched


def test_adding_an_endpoint_in_admin_goes_through_the_services(admin_client):
    response = admin_client.post(
        "/admin/registry/endpoint/add/", {"address": "http://gpu-05:11500/", "port": "11434", "name": "five"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = Endpoint.objects.get()
    assert (endpoint.host.name, endpoint.port, endpoint.name) == ("gpu-05", 11500, "five")


def test_adding_a_duplicate_or_bad_endpoint_in_admin_shows_the_error(admin_client):
    services.register_endpoint("gpu-05")
    page = admin_client.post("/admin/registry/endpoint/add/", {"address": "gpu-05", "port": "11434", "name": ""})
    assert page.status_code == 200
    assert "already registered" in page.content.decode()
    page = admin_client.post("/admin/registry/endpoint/add/", {"address": "gpu 5", "port": "11434", "name": ""})
    assert "spaces" in page.content.decode()
    assert Endpoint.objects.count() == 1


def test_deleting_endpoints_in_admin_removes_them(admin_client):
    endpoint, _ = services.register_endpoint("gpu-01")
    response = admin_client.post(
        "/admin/registry/endpoint/", {"action": "remove_selected", "_selected_action": [endpoint.id]}
    )
    assert response.status_code == 302
    assert not Endpoint.objects.exists()
    removed = Event.objects.get(kind="removed")
    assert removed.detail == {"by": "user root (admin)"} and removed.endpoint_id == endpoint.id


def test_resource_snapshots_are_read_only(admin_client):
    services.record_report(SidecarReport(hostname="gpu-01", cpu_percent=3, ram_used_bytes=1, ram_total_bytes=2))
    snap = ResourceSnapshot.objects.get()
    assert admin_client.get("/admin/registry/resourcesnapshot/add/").status_code == 403
    page = admin_client.get(f"/admin/registry/resourcesnapshot/{snap.id}/change/").content.decode()
    assert 'name="cpu_percent"' not in page


def test_tokens_can_be_revoked_in_admin_and_then_stop_working(admin_client, api):
    token, raw = services.create_token("sidecar", "gpu-01")
    admin_client.post("/admin/registry/token/", {"action": "revoke", "_selected_action": [token.id]})
    assert Token.objects.get().revoked_at is not None
    report = {"hostname": "h", "cpu_percent": 1, "ram_used_bytes": 1, "ram_total_bytes": 2}
    assert api.post("/api/v1/sidecar/report", report, raw).status_code == 401


def test_creating_a_token_in_admin_shows_it_once(admin_client):
    response = admin_client.post("/admin/registry/token/add/", {"label": "gpu-07", "scope": "sidecar"}, follow=True)
    assert "shown once" in response.content.decode()
    assert Token.objects.get().label == "gpu-07"


def test_probe_now_action_queues_a_probe_task_for_the_selected_endpoints(admin_client, settings):
    import redis

    endpoint, _ = services.register_endpoint("gpu-01")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    # The queue's Redis key, under the hub's namespace (kombu's global_keyprefix).
    queue = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] + settings.CELERY_TASK_DEFAULT_QUEUE
    broker.delete(queue)
    response = admin_client.post(
        "/admin/registry/endpoint/", {"action": "probe_now", "_selected_action": [endpoint.id]}, follow=True
    )
    assert "Queued a probe of 1 endpoint" in response.content.decode()
    message = json.loads(broker.lpop(queue))
    assert message["headers"]["task"] == "registry.tasks.probe_endpoints"
    assert message["headers"]["argsrepr"] == f"[[{endpoint.id}]]"


def test_editing_an_endpoint_with_a_bad_port_shows_the_error_and_changes_nothing(admin_client):
    endpoint, _ = services.register_endpoint("gpu-01")
    page = admin_client.post(f"/admin/registry/endpoint/{endpoint.id}/change/", {"port": "70000", "name": ""})
    assert page.status_code == 200
    assert "65535" in page.content.decode()
    endpoint.refresh_from_db()
    assert endpoint.port == 11434
