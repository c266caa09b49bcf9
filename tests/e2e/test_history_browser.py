"""History on the page: each row's last-hour CPU and VRAM sparklines (one request for the rows on
screen) and the 24-hour curves in the details popover."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from registry import services
from registry.models import Host, ResourceSnapshot
from registry.ollama import ProbeResult
from registry.schemas import SidecarReport
from tests.e2e.conftest import require_chromium
from tests.e2e.test_dashboard_browser import GIB, open_dashboard, row, sync_api
from tests.live import LiveStack, in_thread

require_chromium()
pytestmark = [pytest.mark.e2e, pytest.mark.live, pytest.mark.django_db(transaction=True)]
expect = sync_api.expect
ADDRESSES = ["127.0.9.1", "127.0.9.2", "127.0.9.3"]


def seed() -> dict[str, int]:
    """Three endpoints, each on a host with two GPUs that reported every minute for 3 hours, and
    probed every minute for the last hour."""
    ids = dict(zip(ADDRESSES, services.register_endpoints([(a, 11434, "") for a in ADDRESSES]), strict=True))
    now = timezone.now()
    gpus = [
        {"index": g, "name": "A100", "memory_used_bytes": (10 + 30 * g) * GIB, "memory_total_bytes": 80 * GIB}
        for g in range(2)
    ]
    body = {"cpu_percent": 20.0, "ram_used_bytes": GIB, "ram_total_bytes": 4 * GIB, "vram_used_bytes": 50 * GIB,
            "vram_total_bytes": 160 * GIB, "gpus": gpus}  # fmt: skip
    services.record_reports([SidecarReport.model_validate({"host": a, "hostname": a, **body}) for a in ADDRESSES])
    rows = []
    for host in Host.objects.filter(name__in=ADDRESSES):
        for minute in range(1, 180):
            at = now - timedelta(minutes=minute)
            values = dict(body, cpu_percent=float(minute % 50), gpus=gpus)
            rows.append(ResourceSnapshot(host=host, reported_at=at, **values))
    ResourceSnapshot.objects.bulk_create(rows)
    for minute in range(60, 0, -1):
        at = now - timedelta(minutes=minute)
        results = [ProbeResult(i, True, "", 10 + minute % 20, "0.5.7", (), at) for i in ids.values()]
        services.record_probe_results(results, now=at)
    services.roll_up(now=now)  # the beat's task: probe chunks' samples become per-minute latency
    return ids


@pytest.fixture
def stack(tmp_path, settings):
    settings.PROBE_ON_REGISTER = False
    live = LiveStack(tmp_path, components=("daphne",), probe_on_register=False).start()
    yield live
    live.stop()


def test_rows_show_last_hour_sparklines_and_the_details_the_day(stack, browser, operator_user):
    ids = in_thread(seed)
    page = open_dashboard(browser, stack)
    for endpoint_id in ids.values():
        tr = row(page, endpoint_id)
        expect(tr.locator("td.cell-cpu svg.llm-spark-cpu path")).to_have_attribute("d", re.compile(r"^M.{100,}"))
        expect(tr.locator("td.cell-vram svg.llm-spark-vram")).to_have_attribute(
            "aria-label", "VRAM last hour: 50% to 50%"
        )
    # One request drew every row on screen (hosts named in it, not one request per row).
    assert page.evaluate("window.llmDashboard.metrics.sparkFetches") == 1
    cpu_label = row(page, ids["127.0.9.1"]).locator("svg.llm-spark-cpu").get_attribute("aria-label")
    assert cpu_label == "CPU last hour: 0% to 49%"

    row(page, ids["127.0.9.2"]).locator(".llm-host-btn").click()
    details = page.locator("#llm-details")
    expect(details.locator("svg.llm-day-chart path.line-cpu")).to_have_count(1)
    assert len(details.locator("path.line-cpu").get_attribute("d")) > 100
    expect(details.locator("path.line-vram")).to_have_count(1)
    expect(details.locator("path.line-latency")).to_have_count(1)
    expect(details.locator(".details-chart-legend").first).to_contain_text("VRAM 50%")
    assert page.js_errors == []
