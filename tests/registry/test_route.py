"""GET /api/v1/route: the best healthy endpoints for a model, ranked, each saying why."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from registry import services, wire
from registry.models import Endpoint, EndpointModel, Host

URL = "/api/v1/route"
GIB = 1024**3


def host(name: str, *, gpus_free_gib: list[float] | None = (20,), age_s: float = 5, cpu: float = 10.0) -> Host:
    """A machine whose sidecar reported `age_s` seconds ago; one 24 GiB GPU per free amount
    (None: it never reported; []: no GPU)."""
    if gpus_free_gib is None:
        return Host.objects.create(name=name)
    gpus = [
        {"index": i, "name": "L4", "memory_used_bytes": int((24 - f) * GIB), "memory_total_bytes": 24 * GIB}
        for i, f in enumerate(gpus_free_gib)
    ]
    return Host.objects.create(
        name=name,
        last_report_at=timezone.now() - timedelta(seconds=age_s),
        cpu_percent=cpu,
        ram_used_bytes=1,
        ram_total_bytes=2,
        vram_used_bytes=sum(g["memory_used_bytes"] for g in gpus) if gpus else None,
        vram_total_bytes=sum(g["memory_total_bytes"] for g in gpus) if gpus else None,
        gpus=gpus,
    )


def endpoint(on: Host, models: dict[str, dict], *, status: str = "healthy", port: int = 11434) -> Endpoint:
    """An endpoint on the host holding models {name: {size, loaded, size_vram}} (sizes in GiB)."""
    ep = Endpoint.objects.create(host=on, address=on.name, port=port, status=status, latency_ms=7)
    for name, m in models.items():
        EndpointModel.objects.create(
            endpoint=ep,
            name=name,
            size=int(m.get("size", 4) * GIB),
            loaded=m.get("loaded", False),
            size_vram=int(m["size_vram"] * GIB) if "size_vram" in m else None,
        )
    return ep


def hosts_of(reply: dict) -> list[str]:
    return [r["host"] for r in reply["routes"]]


def test_loaded_first_then_a_gpu_it_fits_then_most_free_vram_and_stale_resources_last(api, agent_token):
    big = {"llama3:latest": {"size": 12}}
    endpoint(host("loaded-small", gpus_free_gib=[2]), {"llama3:latest": {"size": 12, "loaded": True, "size_vram": 13}})
    endpoint(host("fits-roomy", gpus_free_gib=[22]), big)
    endpoint(host("fits-tight", gpus_free_gib=[14]), big)
    # 20 GiB free in all, but no one GPU has 12: after every host where it fits.
    endpoint(host("split", gpus_free_gib=[10, 10]), big)
    endpoint(host("stale-huge", gpus_free_gib=[24, 24], age_s=3600), big)
    endpoint(host("no-sidecar", gpus_free_gib=None), big)
    endpoint(host("down", gpus_free_gib=[24]), big, status="unhealthy")
    endpoint(host("unknown", gpus_free_gib=[24]), big, status="unknown")

    response = api.get(f"{URL}?model=llama3:latest&n=10", agent_token)

    assert response.status_code == 200, response.content
    reply = wire.Route.model_validate(response.json()).model_dump(mode="json")
    order = hosts_of(reply)
    assert order[:4] == ["loaded-small", "fits-roomy", "fits-tight", "split"]
    assert set(order[4:]) == {"stale-huge", "no-sidecar"}  # unhealthy and unknown endpoints never appear
    assert reply["candidates"] == 6 and reply["model"] == "llama3:latest"
    why = {r["host"]: r["why"] for r in reply["routes"]}
    assert why["loaded-small"]["loaded"] is True and why["loaded-small"]["model_bytes"] == 13 * GIB
    assert why["fits-roomy"] == {
        "loaded": False,
        "fits": True,
        "model_bytes": 12 * GIB,
        "vram_free_bytes": 22 * GIB,
        "gpu_free_bytes": 22 * GIB,
        "cpu_percent": 10.0,
        "resources": "fresh",
        "reported_at": why["fits-roomy"]["reported_at"],
        "latency_ms": 7,
    }
    assert (why["split"]["fits"], why["split"]["vram_free_bytes"]) == (False, 20 * GIB)
    assert (why["stale-huge"]["resources"], why["stale-huge"]["fits"], why["stale-huge"]["vram_free_bytes"]) == (
        "stale",
        None,
        None,
    )
    assert why["no-sidecar"]["resources"] == "none"
    assert [r["rank"] for r in reply["routes"]] == [1, 2, 3, 4, 5, 6]
    assert reply["routes"][0]["url"] == "http://loaded-small:11434"


def test_a_host_without_a_gpu_ranks_after_hosts_whose_gpu_fits_the_model(api, agent_token):
    endpoint(host("cpu-box", gpus_free_gib=[]), {"phi3:latest": {"size": 2}})
    endpoint(host("gpu-box", gpus_free_gib=[3]), {"phi3:latest": {"size": 2}})
    reply = api.get(f"{URL}?model=phi3", agent_token).json()
    assert hosts_of(reply) == ["gpu-box", "cpu-box"]
    assert reply["routes"][1]["why"]["fits"] is False


def test_equal_endpoints_take_turns_at_the_top(api, agent_token):
    for name in ("twin-a", "twin-b"):
        endpoint(host(name, gpus_free_gib=[20]), {"llama3:latest": {}})
    firsts = {hosts_of(api.get(f"{URL}?model=llama3&n=1", agent_token).json())[0] for _ in range(40)}
    assert firsts == {"twin-a", "twin-b"}


def test_a_name_without_a_tag_means_latest_and_n_says_how_many(api, agent_token):
    for i in range(5):
        endpoint(host(f"gpu-{i}"), {"llama3:latest": {}, "llama3:70b": {"size": 40}})
    reply = api.get(f"{URL}?model=llama3", agent_token).json()
    assert reply["model"] == "llama3:latest"
    assert len(reply["routes"]) == 3 and reply["candidates"] == 5  # three by default
    assert len(api.get(f"{URL}?model=llama3&n=1", agent_token).json()["routes"]) == 1
    assert len(api.get(f"{URL}?model=llama3&n=100", agent_token).json()["routes"]) == 5
    tagged = api.get(f"{URL}?model=llama3:70b&n=5", agent_token).json()
    assert tagged["model"] == "llama3:70b"
    assert all(r["why"]["model_bytes"] == 40 * GIB for r in tagged["routes"])


def test_a_model_nobody_holds_is_404_with_the_models_the_fleet_has(api, agent_token):
    endpoint(host("gpu-1"), {"llama3:latest": {}, "mistral:7b": {}})
    endpoint(host("gpu-2"), {"qwen2:7b": {}}, status="unhealthy")  # the fleet cannot serve it now
    response = api.get(f"{URL}?model=gemma2", agent_token)
    assert response.status_code == 404
    body = wire.RouteNotFound.model_validate(response.json())
    assert body.error == "model_not_found" and "gemma2" in body.detail
    assert body.models == ["llama3:latest", "mistral:7b"]
    # Only :latest answers for a bare name: "mistral" is not "mistral:7b".
    assert api.get(f"{URL}?model=mistral", agent_token).status_code == 404


def test_holders_that_are_all_down_answer_503_with_retry_after(api, agent_token):
    endpoint(host("gpu-1"), {"llama3:latest": {}}, status="unhealthy")
    endpoint(host("gpu-2"), {"llama3:latest": {}}, status="unknown")
    response = api.get(f"{URL}?model=llama3", agent_token)
    assert response.status_code == 503
    body = wire.RouteUnavailable.model_validate(response.json())
    assert (body.error, body.holders) == ("no_healthy_endpoint", 2)
    assert int(response["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "model"),
        ("?model=", "model"),
        ("?n=2", "model"),
        ("?model=llama3&n=0", "n"),
        ("?model=llama3&n=abc", "n"),
        ("?model=llama3&n=101", "n"),
        ("?model=a%00b", "model"),
    ],
)
def test_bad_queries_get_a_400_naming_the_problem(api, agent_token, query, field):
    endpoint(host("gpu-1"), {"llama3:latest": {}})
    response = api.get(f"{URL}{query}", agent_token)
    assert response.status_code == 400, response.content
    body = wire.ErrorBody.model_validate(response.json())
    assert body.error == "invalid_input"
    assert body.detail.startswith(f"{field}:")


# --- who may ask --------------------------------------------------------------------------


def test_agent_token_reads_routes_and_the_snapshot_and_nothing_else(api, agent_token):
    ep = endpoint(host("gpu-1"), {"llama3:latest": {}})
    assert api.get(f"{URL}?model=llama3", agent_token).status_code == 200
    assert api.get("/api/v1/snapshot", agent_token).status_code == 200
    refused = [
        api.get("/api/v1/endpoints", agent_token),
        api.get(f"/api/v1/endpoints/{ep.id}", agent_token),
        api.post("/api/v1/endpoints", {"host": "127.0.0.9"}, agent_token),
        api.delete(f"/api/v1/endpoints/{ep.id}", agent_token),
        api.post("/api/v1/sidecar/report", {"host": "gpu-1", "cpu_percent": 1}, agent_token),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    assert all(r.json()["error"] == "forbidden" and "agent token" in r.json()["detail"] for r in refused)
    assert Endpoint.objects.count() == 1 and Host.objects.get(name="gpu-1").cpu_percent == 10.0


def test_admin_tokens_and_logged_in_users_read_routes_sidecar_tokens_do_not(api, admin_token, sidecar_token, viewer):
    endpoint(host("gpu-1"), {"llama3:latest": {}})
    assert api.get(f"{URL}?model=llama3", admin_token).status_code == 200
    assert api.get(f"{URL}?model=llama3", sidecar_token).status_code == 403
    assert api.get(f"{URL}?model=llama3").status_code == 401
    api.client.force_login(viewer)
    assert api.get(f"{URL}?model=llama3").status_code == 200


def test_create_token_makes_an_agent_token(api, db, capsys):
    from django.core.management import call_command

    endpoint(host("gpu-1"), {"llama3:latest": {}})
    call_command("create_token", "--scope", "agent", "--label", "planner")
    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert api.get(f"{URL}?model=llama3", raw).status_code == 200
    assert api.get("/api/v1/endpoints", raw).status_code == 403


# --- from memory, and how fresh -----------------------------------------------------------


def queries(call) -> int:
    with CaptureQueriesContext(connection) as ctx:
        call()
    return len(ctx.captured_queries)


def test_answers_come_from_memory_and_an_unchanged_registry_is_not_read_again(db, settings):
    for i in range(20):
        endpoint(host(f"gpu-{i}"), {"llama3:latest": {}, f"m{i}:latest": {}})
    settings.ROUTE_CACHE_SECONDS = 3600
    assert queries(lambda: services.route("llama3")) > 0
    assert queries(lambda: services.route("llama3")) == 0
    assert queries(lambda: services.route("m7")) == 0
    # Once the index is older than ROUTE_CACHE_SECONDS: a mark of the endpoints and the hosts'
    # resources, no model rows, since nothing changed.
    settings.ROUTE_CACHE_SECONDS = 0
    assert queries(lambda: services.route("llama3")) == 2


def test_a_probe_recorded_elsewhere_is_seen_once_the_index_is_older_than_the_cache_time(db, settings):
    from registry.ollama import ModelInfo, ProbeResult

    settings.ROUTE_CACHE_SECONDS = 0
    a = endpoint(host("gpu-a", gpus_free_gib=[20]), {"llama3:latest": {}})
    endpoint(host("gpu-b", gpus_free_gib=[22]), {"llama3:latest": {}})
    assert [r["host"] for r in services.route("llama3")["routes"]] == ["gpu-b", "gpu-a"]
    loaded = ModelInfo("llama3:latest", "", 4 * GIB, "", "", "", None, True, 5 * GIB, timezone.now())
    services.record_probe_results([ProbeResult(a.id, True, "", 7, "0.5.7", (loaded,), timezone.now())])
    assert [r["host"] for r in services.route("llama3")["routes"]] == ["gpu-a", "gpu-b"]
    Host.objects.filter(name="gpu-a").update(last_report_at=timezone.now() - timedelta(hours=1))
    assert services.route("llama3")["routes"][0]["why"]["resources"] == "stale"


def test_an_endpoint_removed_in_this_process_is_gone_from_the_next_answer(
    db, settings, django_capture_on_commit_callbacks
):
    settings.ROUTE_CACHE_SECONDS = 3600
    a = endpoint(host("gpu-a"), {"llama3:latest": {}})
    endpoint(host("gpu-b"), {"llama3:latest": {}})
    assert services.route("llama3")["candidates"] == 2
    with django_capture_on_commit_callbacks(execute=True):
        services.remove_endpoint(a.id)
    assert [r["host"] for r in services.route("llama3")["routes"]] == ["gpu-b"]


def test_among_loaded_endpoints_a_host_with_stale_resources_comes_last(api, agent_token):
    loaded = {"llama3:latest": {"loaded": True, "size_vram": 5}}
    endpoint(host("silent", gpus_free_gib=[23], age_s=3600), loaded)
    endpoint(host("reporting", gpus_free_gib=[0.5]), loaded)  # nearly full, but its numbers are current
    orders = {tuple(hosts_of(api.get(f"{URL}?model=llama3", agent_token).json())) for _ in range(20)}
    assert orders == {("reporting", "silent")}


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_an_agent_token_may_not_open_the_report_socket():
    from channels.db import database_sync_to_async

    from agentcom_site.asgi import application
    from tests.sidecar.test_report_socket import connect

    token = await database_sync_to_async(lambda: services.create_token("agent", "planner")[1])()
    ws = await connect(application, token)
    connected, code = await ws.connect()
    assert not connected and code == 4403


def test_an_https_endpoint_is_routed_with_its_scheme(api, agent_token):
    """An Ollama behind TLS must be reached over TLS: the route's URL keeps the scheme."""
    plain = endpoint(host("gpu-0"), {"llama3:latest": {}})
    tls = endpoint(host("gpu-1"), {"llama3:latest": {}})
    Endpoint.objects.filter(id=tls.id).update(scheme="https", revision=tls.revision + 1)
    urls = {r["id"]: r["url"] for r in api.get(f"{URL}?model=llama3&n=5", agent_token).json()["routes"]}
    assert urls == {plain.id: "http://gpu-0:11434", tls.id: "https://gpu-1:11434"}
