"""POST /api/v1/sidecar/report: resources reach the snapshot; ollama_url registers an auto endpoint."""

from __future__ import annotations

import pytest

from registry import services
from registry.models import Endpoint, Host, ResourceSnapshot, Token

URL = "/api/v1/sidecar/report"
GIB = 1024**3


def report(**overrides):
    body = {
        "hostname": "gpu-01.lan",
        "cpu_percent": 41.5,
        "ram_used_bytes": 20 * GIB,
        "ram_total_bytes": 64 * GIB,
        "vram_used_bytes": 30 * GIB,
        "vram_total_bytes": 80 * GIB,
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA A100",
                "memory_used_bytes": 30 * GIB,
                "memory_total_bytes": 80 * GIB,
                "utilization_percent": 55,
            },
        ],
    }
    body.update(overrides)
    return body


def test_report_makes_the_hosts_resources_appear_in_the_snapshot(api, sidecar_token, admin_token):
    response = api.post(URL, report(), sidecar_token)
    assert response.status_code == 200, response.content
    resources = api.get("/api/v1/snapshot", admin_token).json()["resources"]
    host = resources["gpu-01.lan"]
    assert host["cpu_percent"] == 41.5
    assert host["ram_total_bytes"] == 64 * GIB
    assert host["vram_used_bytes"] == 30 * GIB
    assert host["gpus"][0]["name"] == "NVIDIA A100"
    assert host["stale"] is False


def test_report_with_ollama_url_registers_an_auto_endpoint_once(api, sidecar_token, admin_token):
    body = report(ollama_url="http://127.0.0.7:11434")
    first = api.post(URL, body, sidecar_token).json()
    second = api.post(URL, body, sidecar_token).json()
    endpoint = Endpoint.objects.get()
    assert first == second == {"host": "127.0.0.7", "endpoint_id": endpoint.id}
    assert (endpoint.host.name, endpoint.port, endpoint.source) == ("127.0.0.7", 11434, "auto")
    # The host is named after the Ollama URL's host, so endpoint and resources meet on the dashboard.
    snapshot = api.get("/api/v1/snapshot", admin_token).json()
    assert snapshot["endpoints"][0]["host"] == "127.0.0.7"
    assert snapshot["resources"]["127.0.0.7"]["hostname"] == "gpu-01.lan"


def test_a_report_without_gpu_has_null_vram(api, sidecar_token, admin_token):
    api.post(URL, report(vram_used_bytes=None, vram_total_bytes=None, gpus=[]), sidecar_token)
    host = api.get("/api/v1/snapshot", admin_token).json()["resources"]["gpu-01.lan"]
    assert host["vram_total_bytes"] is None


def test_token_use_is_recorded(api, sidecar_token):
    from registry.models import Token

    api.post(URL, report(), sidecar_token)
    assert Token.objects.get(scope="sidecar").last_used_at is not None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cpu_percent": 101}, "cpu_percent"),
        ({"cpu_percent": -1}, "cpu_percent"),
        ({"ram_used_bytes": -5}, "ram_used_bytes"),
        ({"ram_used_bytes": 65 * GIB}, "ram_used_bytes"),
        ({"vram_used_bytes": 90 * GIB}, "vram_used_bytes"),
        ({"vram_used_bytes": None}, "vram"),
        ({"hostname": ""}, "hostname"),
        ({"cpu_percent": "lots"}, "cpu_percent"),
        ({"ollama_url": "http://gpu 01:11434"}, "host"),
        ({"ollama_url": "http://8.8.8.8:11434"}, "REGISTRY_ALLOWED_NETWORKS"),
        ({"gpus": [{"index": 0, "memory_used_bytes": 9, "memory_total_bytes": 1}]}, "memory_used_bytes"),
        ({"ram_used_bytes": 2**64, "ram_total_bytes": 2**64}, "ram_used_bytes"),
        ({"hostname": "gpu\u0000x"}, "control characters"),
        ({"gpus": [{"index": 0, "name": "A\u0000", "memory_used_bytes": 1, "memory_total_bytes": 2}]}, "control"),
    ],
)
def test_bad_report_gets_a_clear_error_and_changes_nothing(api, sidecar_token, overrides, field):
    response = api.post(URL, report(**overrides), sidecar_token)
    assert response.status_code == 400, response.content
    assert field in response.json()["detail"]
    assert not ResourceSnapshot.objects.exists()
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"cpu_percent": True}, "cpu_percent: must be a number, not true or false"),
        ({"ram_used_bytes": "5"}, "ram_used_bytes: must be a number, not text"),
        ({"host": "gpu 01"}, "host: host must not contain spaces"),
        ({"ollama_url": "127.0.0.7:11434"}, "ollama_url: ollama_url must be a URL such as http://gpu-01:11434"),
        ({"ollama_url": "http://127.0.0.7:11434/api"}, "ollama_url: host must not contain a path"),
    ],
)
def test_a_report_the_openapi_description_refuses_is_invalid_input(api, sidecar_token, overrides, detail):
    response = api.post(URL, report(**overrides), sidecar_token)
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_input"
    assert response.json()["detail"].startswith(detail)
    assert not ResourceSnapshot.objects.exists()


@pytest.mark.parametrize(
    ("overrides", "detail"),
    [
        ({"ram_used_bytes": 65 * GIB}, "ram_used_bytes must not exceed ram_total_bytes"),
        ({"vram_total_bytes": None}, "vram_used_bytes and vram_total_bytes are both set or both null"),
        (
            {"gpus": [{"index": 0, "memory_used_bytes": 9, "memory_total_bytes": 1}]},
            "gpus.0: memory_used_bytes must not exceed memory_total_bytes",
        ),
        ({"hostname": "my box"}, "hostname names the machine when host and ollama_url are not given"),
    ],
)
def test_a_well_formed_report_breaking_a_rule_between_fields_is_inconsistent(api, sidecar_token, overrides, detail):
    # The OpenAPI description allows these bodies (no JSON schema can say "used <= total"), so a
    # client can tell them from bodies it should never have sent.
    response = api.post(URL, report(**overrides), sidecar_token)
    assert response.status_code == 400, response.content
    assert response.json() == {"error": "inconsistent_report", "detail": response.json()["detail"]}
    assert response.json()["detail"].startswith(detail)
    assert not ResourceSnapshot.objects.exists()


def test_a_report_with_whole_floats_for_byte_counts_is_stored(api, sidecar_token, admin_token):
    # JSON Schema counts 5.0 as an integer, so the hub does too.
    response = api.post(URL, report(ram_used_bytes=float(20 * GIB), host="", ollama_url=""), sidecar_token)
    assert response.status_code == 200, response.content
    assert api.get("/api/v1/snapshot", admin_token).json()["resources"]["gpu-01.lan"]["ram_used_bytes"] == 20 * GIB


def test_report_with_wrong_token_is_401(api, db):
    assert api.post(URL, report(), "nope").status_code == 401
    assert not ResourceSnapshot.objects.exists()


def test_report_with_revoked_token_is_401(api, revoked_token):
    assert api.post(URL, report(), revoked_token).status_code == 401


def test_report_that_is_not_json_is_400(api, sidecar_token):
    response = api.post(URL, "not json at all", sidecar_token, raw=True)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_a_sidecar_naming_its_machine_gets_its_endpoint_and_resources_on_one_row(api, sidecar_token, admin_token):
    api.post(URL, report(host="gpu-01", ollama_url="http://127.0.0.2:11434"), sidecar_token)
    snapshot = api.get("/api/v1/snapshot", admin_token).json()
    row = snapshot["endpoints"][0]
    assert (row["host"], row["address"], row["url"]) == ("gpu-01", "127.0.0.2", "http://127.0.0.2:11434")
    assert snapshot["resources"][row["host"]]["cpu_percent"] == 41.5


def test_a_report_never_moves_a_manual_endpoint_to_another_machine(api, sidecar_token, admin_token):
    created = api.post("/api/v1/endpoints", {"host": "127.0.0.3"}, admin_token).json()
    reply = api.post(URL, report(host="gpu-03", ollama_url="http://127.0.0.3:11434"), sidecar_token).json()
    assert reply == {"host": "gpu-03", "endpoint_id": created["id"]}
    row = api.get(f"/api/v1/endpoints/{created['id']}", admin_token).json()
    assert (row["host"], row["source"], row["revision"]) == ("127.0.0.3", "manual", created["revision"])


def test_an_auto_endpoint_follows_the_machine_its_reports_name(api, admin_token):
    # An admin token may report for any machine (a sidecar token only for its own).
    api.post(URL, report(ollama_url="http://127.0.0.4:11434"), admin_token)
    api.post(URL, report(host="gpu-04", ollama_url="http://127.0.0.4:11434"), admin_token)
    row = api.get("/api/v1/endpoints", admin_token).json()[0]
    assert (row["host"], row["address"], row["source"]) == ("gpu-04", "127.0.0.4", "auto")


def test_the_latest_values_are_the_last_report_while_history_is_sampled(api, sidecar_token, admin_token, settings):
    settings.RESOURCE_HISTORY_SECONDS = 3600
    for cpu in (10, 20, 30):
        assert api.post(URL, report(cpu_percent=cpu), sidecar_token).status_code == 200
    assert api.get("/api/v1/snapshot", admin_token).json()["resources"]["gpu-01.lan"]["cpu_percent"] == 30
    assert list(ResourceSnapshot.objects.values_list("cpu_percent", flat=True)) == [10]


def test_unknown_api_routes_and_methods_answer_json(api, admin_token):
    missing = api.get("/api/v1/no-such-thing", admin_token)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = api.client.put("/api/v1/snapshot", HTTP_AUTHORIZATION=f"Bearer {admin_token}")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_a_sidecar_tokens_first_report_binds_it_to_that_host(api, sidecar_token, admin_token):
    assert api.post(URL, report(host="gpu-01"), sidecar_token).status_code == 200
    assert Token.objects.get(scope="sidecar").host == "gpu-01"
    refused = api.post(URL, report(host="gpu-02", cpu_percent=99), sidecar_token)
    assert refused.status_code == 403 and refused.json()["error"] == "wrong_host"
    assert "gpu-01" in refused.json()["detail"]
    assert set(Host.objects.values_list("name", flat=True)) == {"gpu-01"}


def test_a_token_bound_at_creation_reports_only_for_its_host(api, db):
    _, raw = services.create_token("sidecar", "gpu-05", host="GPU-05")
    assert api.post(URL, report(host="gpu-06"), raw).status_code == 403
    assert api.post(URL, report(host="gpu-05"), raw).status_code == 200
    assert list(Host.objects.values_list("name", flat=True)) == ["gpu-05"]


def test_a_sidecar_may_advertise_only_an_ollama_on_its_own_machine(api, sidecar_token):
    # The report comes from another machine (192.0.2.10) but names an Ollama on this one.
    from_elsewhere = {"REMOTE_ADDR": "192.0.2.10", "HTTP_AUTHORIZATION": f"Bearer {sidecar_token}"}
    body = report(ollama_url="http://127.0.0.9:11434")
    refused = api.client.post(URL, body, content_type="application/json", **from_elsewhere)
    assert refused.status_code == 403 and refused.json()["error"] == "not_this_machine"
    assert "127.0.0.9" in refused.json()["detail"] and "192.0.2.10" in refused.json()["detail"]
    assert not Endpoint.objects.exists() and not Host.objects.exists()
    assert Token.objects.get(scope="sidecar").host == ""  # a refused report binds nothing


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_sidecars(api, sidecar_token, settings):
    settings.REGISTRY_TRUSTED_PROXIES = "192.0.2.0/24"
    body = report(ollama_url="http://127.0.0.9:11434")
    proxy = {"REMOTE_ADDR": "192.0.2.10", "HTTP_AUTHORIZATION": f"Bearer {sidecar_token}"}
    forwarded = {**proxy, "HTTP_X_FORWARDED_FOR": "203.0.113.5, 127.0.0.9"}
    assert api.client.post(URL, body, content_type="application/json", **forwarded).status_code == 200
    spoofed = {**proxy, "HTTP_X_FORWARDED_FOR": "127.0.0.9, 203.0.113.5"}
    assert api.client.post(URL, body, content_type="application/json", **spoofed).status_code == 403
    settings.REGISTRY_TRUSTED_PROXIES = ""
    assert api.client.post(URL, body, content_type="application/json", **forwarded).status_code == 403


def test_create_token_command_binds_a_host(db):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("create_token", "--scope", "sidecar", "--label", "gpu-07", "--host", "gpu-07", stdout=out)
    assert "for host gpu-07" in out.getvalue()
    assert Token.objects.get().host == "gpu-07"
