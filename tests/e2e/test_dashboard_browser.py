"""End to end on the real stack: daphne + Redis + Celery worker and beat + fake Ollama + Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from registry import services
from tests.conftest import PASSWORD
from tests.e2e.conftest import require_chromium
from tests.live import LiveStack, in_thread

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
require_chromium()

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.e2e, pytest.mark.live, pytest.mark.django_db(transaction=True)]
GIB = 1024**3


@pytest.fixture
def stack(tmp_path):
    live = LiveStack(tmp_path, probe_interval=1.0).start()
    yield live
    live.stop()


def open_dashboard(browser, stack, username="operator"):
    page = browser.new_context(viewport={"width": 1400, "height": 800}).new_page()  # a context: tabs share it
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"{stack.url}/dashboard/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.url}/dashboard/")
    sync_api.expect(page.locator("#llm-connection-state")).to_have_text("live", timeout=10_000)
    page.js_errors = errors
    return page


def row(page, endpoint_id):
    return page.locator(f'tr[data-endpoint-id="{endpoint_id}"]')


def test_operator_adds_watches_and_removes_an_endpoint_live_in_two_pages(stack, browser, fake_fleet, operator_user):
    expect = sync_api.expect
    host, port = fake_fleet.add(models=["llama3:8b", "<img src=x onerror=alert(1)>"], loaded=["llama3:8b"])
    first = open_dashboard(browser, stack)
    second = open_dashboard(browser, stack)

    # Add with the form: the row appears in both pages and fills in with its models (probed at once).
    first.fill("#llm-add-host", host)
    first.fill("#llm-add-port", str(port))
    first.fill("#llm-add-name", "e2e box")
    first.click("button.llm-add-btn")
    for page in (first, second):
        expect(page.locator("#llm-registry-body tr")).to_have_count(1, timeout=5_000)
    endpoint_id = first.locator("#llm-registry-body tr").get_attribute("data-endpoint-id")
    for page in (first, second):
        expect(row(page, endpoint_id).locator(".llm-status-dot")).to_have_class(
            "llm-status-dot llm-status-healthy", timeout=5_000
        )
        expect(row(page, endpoint_id)).to_contain_text("llama3:8b")
        expect(row(page, endpoint_id)).to_contain_text("<img src=x onerror=alert(1)>")  # literal text
        expect(row(page, endpoint_id).locator("img")).to_have_count(0)
        expect(page.locator(".llm-fleet-chip").first).to_have_text("<img src=x onerror=alert(1)> (1 host)")
    expect(row(first, endpoint_id).locator(".llm-model-loaded")).to_have_count(1)

    # Unchanged probes every second keep "Last Checked" fresh (it never drifts to "12s ago"):
    # wait for three newer probe times in a row (its title holds the time), then read the age.
    checked = row(first, endpoint_id).locator(".llm-checked")
    for _ in range(3):
        expect(checked).not_to_have_attribute("title", checked.get_attribute("title"), timeout=5_000)
    expect(checked).to_have_text(re.compile(r"^[0-2]s ago$"))

    # A sidecar report (over the REST API, as a sidecar sends it) shows resources with no reload.
    token = in_thread(services.create_token, "sidecar", "e2e")[1]
    report = {
        "hostname": "e2e-host",
        "host": host,
        "cpu_percent": 41.5,
        "ram_used_bytes": 20 * GIB,
        "ram_total_bytes": 64 * GIB,
        "vram_used_bytes": 30 * GIB,
        "vram_total_bytes": 80 * GIB,
    }
    answer = httpx.post(f"{stack.url}/api/v1/sidecar/report", json=report, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    expect(row(second, endpoint_id).locator(".resource-bar-cpu")).to_have_attribute(
        "style", "width: 41.5%;", timeout=3_000
    )
    ARTIFACTS.mkdir(exist_ok=True)
    first.screenshot(path=str(ARTIFACTS / "dashboard-e2e.png"), full_page=True)

    # The fake starts failing: the dot turns red with no reload, in both pages, with the reason.
    fake_fleet.set(host, port, mode="http500")
    for page in (first, second):
        expect(row(page, endpoint_id).locator(".llm-status-dot")).to_have_class(
            "llm-status-dot llm-status-unhealthy", timeout=10_000
        )
        expect(row(page, endpoint_id)).to_contain_text("HTTP 500")

    # A server-side error shows next to the form, in plain words.
    first.fill("#llm-add-host", "gpu 01")
    first.click("button.llm-add-btn")
    expect(first.locator("[role=alert]")).to_contain_text("spaces", timeout=3_000)

    # Remove (confirm accepted): the row disappears from both pages.
    row(first, endpoint_id).locator(".llm-remove-btn").click()
    for page in (first, second):
        expect(page.locator("#llm-registry-body tr")).to_have_count(0, timeout=3_000)
    assert not in_thread(services.endpoint_rows)
    assert first.js_errors == [] and second.js_errors == []


def test_page_resyncs_after_the_hub_restarts(stack, browser, operator_user):
    page = open_dashboard(browser, stack)
    stack.procs["daphne"].terminate()
    stack.procs["daphne"].wait(timeout=10)
    sync_api.expect(page.locator("#llm-connection-state")).not_to_have_text("live", timeout=5_000)
    endpoint, _ = in_thread(services.register_endpoint, "gpu-while-down")  # while the page is offline; no one to tell
    stack.start_component("daphne")
    sync_api.expect(page.locator("#llm-connection-state")).to_have_text("live", timeout=20_000)
    sync_api.expect(row(page, endpoint.id)).to_have_count(1, timeout=5_000)


def test_a_host_whose_sidecar_goes_silent_shows_unknown_resources_without_a_reload(tmp_path, browser, operator_user):
    stack = LiveStack(tmp_path, components=("daphne",), STALE_AFTER_SECONDS="3").start()
    try:
        endpoint, _ = in_thread(services.register_endpoint, "127.0.3.3")
        token = in_thread(services.create_token, "sidecar", "quiet")[1]
        report = {
            "hostname": "quiet",
            "host": "127.0.3.3",
            "cpu_percent": 55.0,
            "ram_used_bytes": GIB,
            "ram_total_bytes": 4 * GIB,
        }
        page = open_dashboard(browser, stack)
        httpx.post(f"{stack.url}/api/v1/sidecar/report", json=report, headers={"Authorization": f"Bearer {token}"})
        cpu = row(page, endpoint.id).locator(".resource-bar-cpu")
        sync_api.expect(cpu).to_have_count(1, timeout=3_000)
        sync_api.expect(row(page, endpoint.id)).to_contain_text("N/A")  # no GPU on this host
        # No more reports: after STALE_AFTER_SECONDS the numbers give way to "unknown".
        sync_api.expect(cpu).to_have_count(0, timeout=6_000)
        sync_api.expect(row(page, endpoint.id)).to_contain_text("unknown")
    finally:
        stack.stop()
