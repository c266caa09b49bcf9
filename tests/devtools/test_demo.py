"""The demo keeps one sidecar token per simulated host across runs, and its simulated sidecars send reports the hub accepts."""

from __future__ import annotations

import json
import stat

from devtools import demo
from registry import services
from registry.models import Endpoint, Host, Token


def test_the_demo_keeps_one_private_token_per_host_across_runs(db, tmp_path):
    path = tmp_path / demo.TOKEN_FILE
    first = demo.sidecar_tokens(path, ["gpu-a", "gpu-b"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert demo.sidecar_tokens(path, ["gpu-a", "gpu-b"]) == first
    assert dict(Token.objects.values_list("host", "scope")) == {"gpu-a": "sidecar", "gpu-b": "sidecar"}


def test_a_revoked_or_foreign_demo_token_is_replaced(db, tmp_path):
    path = tmp_path / demo.TOKEN_FILE
    first = demo.sidecar_tokens(path, ["gpu-a"])["gpu-a"]
    services.revoke_tokens(Token.objects.values_list("id", flat=True))
    second = demo.sidecar_tokens(path, ["gpu-a"])["gpu-a"]
    assert second != first
    assert json.loads(path.read_text()) == {"gpu-a": second}
    path.write_text("not json at all")
    path.chmod(0o644)
    third = demo.sidecar_tokens(path, ["gpu-a"])["gpu-a"]
    assert third not in (first, second)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert services.authenticate_token(third).host == "gpu-a"


def test_every_simulated_sidecar_report_is_accepted_by_the_hub(db):
    from agentcom_sidecar.agent import build_report

    reporting = [host for host in demo.FLEET if host.reports]
    for index, host in enumerate(reporting, start=1):
        host.step()
        report = build_report(
            host.resources(), hostname=f"{host.name}.demo", host=host.name, ollama_url=f"http://127.0.77.{index}:11434"
        )
        services.record_report(services.parse_report(report))
    assert set(Host.objects.values_list("name", flat=True)) == {host.name for host in reporting}
    assert Endpoint.objects.filter(source="auto").count() == len(reporting)
    without_gpu = Host.objects.get(name="cpu-box-1").snapshots.latest("reported_at")
    assert without_gpu.vram_total_bytes is None
