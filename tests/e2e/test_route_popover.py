"""The fleet summary shows, per model, where an agent would be sent (GET /api/v1/route) and why."""

from __future__ import annotations

import pytest

from registry import services
from registry.schemas import SidecarReport
from tests.e2e.test_dashboard_browser import GIB, open_dashboard, sync_api
from tests.e2e.test_dashboard_triage import model, stack  # noqa: F401  (the fixture)
from tests.live import in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.live, pytest.mark.django_db(transaction=True)]
expect = sync_api.expect


def seed() -> dict[str, int]:
    """mistral:7b on three healthy hosts: loaded on .2 only; .1 has the most free VRAM."""
    from django.utils import timezone

    from registry.ollama import ProbeResult

    addresses = ["127.0.8.1", "127.0.8.2", "127.0.8.3"]
    ids = dict(zip(addresses, services.register_endpoints([(a, 11434, "") for a in addresses]), strict=True))
    now = timezone.now()
    services.record_probe_results(
        [ProbeResult(ids[a], True, "", 9, "0.5.7", (model("mistral:7b", a.endswith(".2")),), now) for a in addresses],
        now=now,
    )
    for a, used in (("127.0.8.1", 2), ("127.0.8.2", 20), ("127.0.8.3", 10)):
        gpu = {"index": 0, "name": "L4", "memory_used_bytes": used * GIB, "memory_total_bytes": 24 * GIB}
        report = {"host": a, "hostname": a, "cpu_percent": 12.0, "ram_used_bytes": GIB, "ram_total_bytes": 4 * GIB,
                  "vram_used_bytes": used * GIB, "vram_total_bytes": 24 * GIB, "gpus": [gpu]}  # fmt: skip
        services.record_reports([SidecarReport.model_validate(report)])
    return ids


def test_the_fleet_summary_shows_where_to_run_each_model(stack, browser, operator_user):  # noqa: F811
    ids = in_thread(seed)
    page = open_dashboard(browser, stack)
    expect(page.locator(".llm-fleet-chip", has_text="mistral:7b")).to_have_text("mistral:7b (3 hosts, loaded on 1)")
    page.click('button.llm-fleet-route[data-model="mistral:7b"]')
    details = page.locator("#llm-details")
    expect(details).to_be_visible()
    expect(page.locator("#llm-details-title")).to_have_text("Where to run mistral:7b")
    top = details.locator(".llm-route-top")
    # Loaded beats the host with the most free VRAM; that one comes next.
    expect(top).to_have_text("127.0.8.2:11434: loaded, 4.0 GiB VRAM free, CPU 12%, 9 ms")
    expect(top).to_have_attribute("data-endpoint-id", str(ids["127.0.8.2"]))
    expect(details.locator(".llm-route-rest li")).to_have_text(
        [
            "127.0.8.1:11434: on disk, fits a GPU, 22.0 GiB VRAM free, CPU 12%, 9 ms",
            "127.0.8.3:11434: on disk, fits a GPU, 14.0 GiB VRAM free, CPU 12%, 9 ms",
        ]
    )
    page.keyboard.press("Escape")
    expect(details).to_be_hidden()
