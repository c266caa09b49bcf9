"""The endpoint's timeline in the details popover: its events newest first, updated while open."""

from __future__ import annotations

import pytest
from django.utils import timezone

from registry import services
from registry.ollama import ProbeResult
from tests.e2e.conftest import require_chromium
from tests.e2e.test_dashboard_browser import open_dashboard, row, sync_api
from tests.e2e.test_dashboard_triage import model
from tests.live import LiveStack, in_thread

require_chromium()
pytestmark = [pytest.mark.e2e, pytest.mark.live, pytest.mark.django_db(transaction=True)]
expect = sync_api.expect


@pytest.fixture
def stack(tmp_path, settings):
    settings.PROBE_ON_REGISTER = False  # probe results are recorded here
    live = LiveStack(tmp_path, components=("daphne",), probe_on_register=False).start()
    yield live
    live.stop()


def probe(endpoint_id: int, ok: bool) -> None:
    now = timezone.now()
    if ok:
        result = ProbeResult(endpoint_id, True, "", 9, "0.5.7", (model("llama3:8b", True),), now)
    else:
        result = ProbeResult(endpoint_id, False, "connection refused", 5, "", (), now)
    services.record_probe_results([result], now=now)


def seed() -> int:
    endpoint, _ = services.register_endpoint("127.0.9.1", 11434, "rack a", by="user alice")
    probe(endpoint.id, True)
    probe(endpoint.id, False)
    probe(endpoint.id, False)
    return endpoint.id


def test_the_popover_shows_the_endpoints_events_newest_first_and_new_ones_as_they_happen(stack, browser, operator_user):
    endpoint_id = in_thread(seed)
    page = open_dashboard(browser, stack)
    row(page, endpoint_id).locator(".llm-host-btn").click()
    details = page.locator("#llm-details")
    expect(details).to_be_visible()
    events = details.locator(".llm-timeline .llm-event")
    expect(events.first).to_contain_text("healthy → unhealthy: connection refused")
    texts = events.all_inner_texts()
    assert any("model llama3:8b loaded" in t for t in texts)
    assert "registered by user alice" in texts[-1]
    expect(details).to_contain_text("Uptime:")

    # A recovery while the popover is open appears on top without closing it.
    in_thread(lambda: probe(endpoint_id, True))
    expect(events.first).to_contain_text("unhealthy → healthy")
    expect(details).to_be_visible()
    # Event text is text, never markup: the label and reasons come from the network.
    assert page.locator("#llm-details img").count() == 0
    assert page.js_errors == []
