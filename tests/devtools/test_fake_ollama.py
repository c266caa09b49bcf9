"""The fake Ollama fleet: real HTTP, Ollama's shapes, and a control API that changes it live."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from devtools.fake_ollama import FakeEndpoint, FakeFleet, fake_fleet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fleet():
    with fake_fleet() as fleet:
        yield fleet


@pytest.fixture
def control(fleet):
    with httpx.Client(base_url=fleet.control_url, timeout=5) as client:
        yield client


def get(url: str, path: str) -> httpx.Response:
    return httpx.get(url + path, timeout=2, follow_redirects=False)


def test_endpoint_speaks_ollamas_documented_shapes(fleet):
    host, port = fleet.add(models=["llama3:8b", "mistral"], loaded=["llama3:8b"])
    url = fleet.url(host, port)
    assert get(url, "/").text == "Ollama is running"
    assert get(url, "/api/version").json() == {"version": "0.5.7"}
    llama, mistral = get(url, "/api/tags").json()["models"]
    assert (llama["name"], mistral["name"]) == ("llama3:8b", "mistral")
    assert re.fullmatch(r"[0-9a-f]{64}", llama["digest"])
    assert llama["details"] == {
        "format": "gguf",
        "family": "llama",
        "families": ["llama"],
        "parameter_size": "8B",
        "quantization_level": "Q4_0",
    }
    assert llama["size"] > 0 and llama["modified_at"].startswith("2024-")
    (running,) = get(url, "/api/ps").json()["models"]
    assert running["name"] == "llama3:8b"
    assert running["size_vram"] == running["size"]
    assert running["expires_at"].endswith("Z")


def test_control_api_switches_a_mode_live_and_a_client_sees_it(control):
    created = control.post("/endpoints", json={"models": ["qwen2.5:14b"], "mode": "healthy"})
    assert created.status_code == 201
    endpoint = created.json()
    key, url = f"{endpoint['host']}:{endpoint['port']}", endpoint["url"]
    assert get(url, "/api/tags").status_code == 200

    assert control.patch(f"/endpoints/{key}", json={"mode": "http500"}).json()["mode"] == "http500"
    assert get(url, "/api/tags").status_code == 500

    control.patch(f"/endpoints/{key}", json={"mode": "refused"})
    with pytest.raises(httpx.ConnectError):
        get(url, "/api/tags")

    control.patch(f"/endpoints/{key}", json={"mode": "healthy", "models": ["phi3:3.8b"]})
    assert [m["name"] for m in get(url, "/api/tags").json()["models"]] == ["phi3:3.8b"]

    assert control.delete(f"/endpoints/{key}").status_code == 204
    assert key not in {f"{e['host']}:{e['port']}" for e in control.get("/endpoints").json()}
    with pytest.raises(httpx.ConnectError):
        get(url, "/api/tags")


def test_control_api_lists_endpoints_with_their_mode_and_models(fleet, control):
    host, port = fleet.add(models=["llama3:8b"], loaded=["llama3:8b"], mode="no_ps")
    (listed,) = [e for e in control.get("/endpoints").json() if (e["host"], e["port"]) == (host, port)]
    assert listed["mode"] == "no_ps"
    assert (listed["models"], listed["loaded"]) == (["llama3:8b"], ["llama3:8b"])
    assert get(listed["url"], "/api/ps").status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"mode": "sideways"}, {"delay": "soon"}, {"models": "llama3"}, {"colour": "blue"}, ["mode", "hang"]],
)
def test_control_api_refuses_bad_changes_with_a_reason(fleet, control, body):
    host, port = fleet.add()
    response = control.patch(f"/endpoints/{host}:{port}", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert response.json()["detail"]


def test_control_api_answers_404_for_an_unknown_endpoint(control):
    assert control.patch("/endpoints/127.0.0.1:1", json={"mode": "hang"}).status_code == 404
    assert control.delete("/endpoints/127.0.0.1:1").status_code == 404


def test_python_api_changes_behaviour_too(fleet):
    host, port = fleet.add(models=["llama3:8b"])
    fleet.set(host, port, mode="redirect")
    assert get(fleet.url(host, port), "/api/tags").status_code == 302
    fleet.set(host, port, mode="invalid_json")
    with pytest.raises(json.JSONDecodeError):
        get(fleet.url(host, port), "/api/tags").json()
    fleet.set(host, port, mode="slow", delay=0.2)
    assert get(fleet.url(host, port), "/api/version").elapsed.total_seconds() >= 0.2


def test_hang_mode_accepts_and_never_answers(fleet):
    host, port = fleet.add(mode="hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(fleet.url(host, port) + "/api/tags", timeout=httpx.Timeout(0.5, connect=2))


def test_oversized_mode_streams_more_than_two_mib_of_valid_json(fleet):
    host, port = fleet.add(mode="oversized")
    response = get(fleet.url(host, port), "/api/tags")
    assert "content-length" not in response.headers  # the client has to count for itself
    assert len(response.content) > 2 * 1024 * 1024
    assert response.json()["models"]


def test_flapping_alternates_healthy_and_http500_every_period(monkeypatch):
    endpoint = FakeEndpoint(host="127.0.0.1", port=1, mode="flapping", period=10)
    monkeypatch.setattr("devtools.fake_ollama.time.time", lambda: 1_000_005.0)
    assert endpoint.current_mode() == "healthy"
    monkeypatch.setattr("devtools.fake_ollama.time.time", lambda: 1_000_015.0)
    assert endpoint.current_mode() == "http500"


def test_many_loopback_addresses_share_one_port(fleet):
    first = fleet.add(host="127.0.66.1", port=0)
    second = fleet.add(host="127.0.66.2", port=first[1])
    assert get(fleet.url(*first), "/").status_code == get(fleet.url(*second), "/").status_code == 200


def test_a_fleet_must_be_started_before_use():
    with pytest.raises(RuntimeError, match="start"):
        FakeFleet().add()


def test_command_line_serves_a_spec_and_stops_on_sigterm(tmp_path):
    spec = tmp_path / "fleet.json"
    spec.write_text(
        json.dumps(
            {
                "endpoints": [
                    {"host": "127.0.67.1", "port": 0, "models": ["llama3:8b"], "loaded": ["llama3:8b"]},
                    {"host": "127.0.67.2", "port": 0, "mode": "flapping", "period": 5},
                    {"host": "127.0.67.3", "port": 0, "mode": "refused"},
                ]
            }
        )
    )
    args = ["--spec", str(spec), "--count", "2", "--address-base", "127.0.68.1", "--port", "0", "--control-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.fake_ollama", *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = [proc.stdout.readline().strip() for _ in range(6)]
        assert len([line for line in lines if line.startswith("http://127.0.6")]) == 5
        control = lines[-1].removeprefix("control: ")
        modes = sorted(e["mode"] for e in httpx.get(control + "/endpoints", timeout=5).json())
        assert modes == ["flapping", "healthy", "healthy", "healthy", "refused"]
        assert get(lines[0], "/api/ps").json()["models"][0]["name"] == "llama3:8b"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
