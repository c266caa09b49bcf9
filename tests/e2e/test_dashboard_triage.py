"""Finding the endpoint that matters, on any screen, for every user: summary filters, search,
natural order, details, narrow and dark screens, sessions, and axe-core's accessibility rules.

axe-core comes from the pinned `axe-playwright-python` (requirements-dev.txt), which bundles
axe.min.js (MPL-2.0): one pinned line instead of a 570 KB vendored file, upgraded by its pin.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from registry import services
from registry.ollama import ModelInfo, ProbeResult
from registry.schemas import SidecarReport
from tests.conftest import PASSWORD
from tests.e2e.test_dashboard_browser import GIB, open_dashboard, sync_api
from tests.live import LiveStack, in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.live, pytest.mark.django_db(transaction=True)]
expect = sync_api.expect


def model(name: str, loaded: bool = False) -> ModelInfo:
    now = timezone.now()
    return ModelInfo(name, "sha256:" + "b" * 64, 4 * GIB, "llama", "8B", "Q4_0", now, loaded, 5 * GIB if loaded else None,
                     now + timedelta(minutes=5) if loaded else None)  # fmt: skip


def seed_fleet() -> dict[str, int]:
    """127.0.9.1..12: 10 healthy (llama3 on the even ones), .3 unhealthy, .12 never answered;
    .1 has four GPUs, one nearly full; .5 has gone silent."""
    ids = dict(zip([f"127.0.9.{i}" for i in range(1, 13)], services.register_endpoints(
        [(f"127.0.9.{i}", 11434, "rack a" if i == 1 else "") for i in range(1, 13)]), strict=True))  # fmt: skip
    now = timezone.now()
    ok = [
        ProbeResult(ids[a], True, "", 9, "0.5.7",
                    (model("llama3:8b", True),) * (i % 2 == 0) + tuple(model(f"extra-{k}:7b") for k in range(5)), now)
        for i, a in enumerate(ids, start=1) if i != 12
    ]  # fmt: skip
    services.record_probe_results(ok, now=now)
    down = [ProbeResult(ids["127.0.9.3"], False, "connection refused", 5, "", (), now)]
    services.record_probe_results(down, now=now)
    services.record_probe_results(down, now=now)
    gpus = [{"index": g, "name": "A100", "memory_used_bytes": (78 if g == 2 else 8) * GIB,
             "memory_total_bytes": 80 * GIB, "utilization_percent": 10.0} for g in range(4)]  # fmt: skip
    report = {"host": "127.0.9.1", "hostname": "a", "cpu_percent": 20.0, "ram_used_bytes": GIB, "ram_total_bytes": 4 * GIB,
              "vram_used_bytes": 102 * GIB, "vram_total_bytes": 320 * GIB, "gpus": gpus}  # fmt: skip
    services.record_reports([SidecarReport.model_validate(report)])
    silent = dict(report, host="127.0.9.5", gpus=[], vram_used_bytes=None, vram_total_bytes=None)
    services.record_reports([SidecarReport.model_validate(silent)], now=now - timedelta(hours=1))
    return ids


@pytest.fixture
def stack(tmp_path, settings):
    settings.PROBE_ON_REGISTER = False  # the rows are made here, probe results included
    live = LiveStack(tmp_path, components=("daphne",), probe_on_register=False).start()
    yield live
    live.stop()


def hosts_shown(page) -> list[str]:
    return page.locator("#llm-registry-body tr[data-endpoint-id] .llm-host-btn .llm-host").all_inner_texts()


def after_layout(page) -> None:
    """Wait until the page has handled what came before (a resize) and painted: two frames."""
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")


def axe_violations(page) -> list[str]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_an_operator_finds_and_triages_the_endpoint_that_matters(stack, browser, operator_user):
    ids = in_thread(seed_fleet)
    page = open_dashboard(browser, stack)
    count = lambda name: page.locator(f'#llm-summary [data-count="{name}"]')  # noqa: E731
    expect(count("all")).to_have_text("12")
    expect(count("unhealthy")).to_have_text("1")
    expect(count("unknown")).to_have_text("1")
    expect(count("healthy")).to_have_text("10")
    expect(count("stale")).to_have_text("1")

    # Problems first, then hosts in natural order (127.0.9.10 after 127.0.9.9, not after .1).
    shown = hosts_shown(page)
    assert shown[:2] == ["127.0.9.3", "127.0.9.12"]
    assert shown[2:] == [f"127.0.9.{i}" for i in (1, 2, 4, 5, 6, 7, 8, 9, 10, 11)]

    # The down endpoint keeps its models as last known, never as loaded.
    down = page.locator(f'tr[data-endpoint-id="{ids["127.0.9.3"]}"]')
    expect(down.locator(".llm-status-dot")).to_have_class("llm-status-dot llm-status-unhealthy")
    expect(down).to_contain_text("unhealthy")  # text for screen readers, not colour alone
    expect(down.locator(".llm-models-stale")).to_have_count(1)
    expect(down.locator(".llm-model-loaded")).to_have_count(0)
    # The fleet chips count reachable hosts only: llama3 is on 5 healthy even hosts, loaded on all.
    expect(page.locator(".llm-fleet-chip", has_text="llama3:8b")).to_have_text("llama3:8b (5 hosts, loaded on 5)")

    # One mini-bar per GPU; the host is as full as its fullest GPU (97.5%, not the 31.9% average).
    first = page.locator(f'tr[data-endpoint-id="{ids["127.0.9.1"]}"]')
    expect(first.locator(".cell-vram .resource-bar-vram")).to_have_count(4)
    expect(first.locator(".cell-vram .resource-label")).to_have_text("97.5%")

    # Summary counts filter; the filter lives in the URL and survives a reload.
    page.click('#llm-summary button[data-filter="unhealthy"]')
    expect(page.locator("#llm-registry-body tr[data-endpoint-id]")).to_have_count(1)
    assert "status=unhealthy" in page.url
    page.click('#llm-summary button[data-filter="unhealthy"]')  # again: off
    expect(page.locator("#llm-registry-body tr[data-endpoint-id]")).to_have_count(12)

    page.fill("#llm-search", "llama3")
    expect(page.locator("#llm-registry-body tr[data-endpoint-id]")).to_have_count(5)
    assert "q=llama3" in page.url
    page.click('th button[data-sort="host"]')
    page.click('th button[data-sort="host"]')  # descending
    expect(page.locator("th.col-host")).to_have_attribute("aria-sort", "descending")
    assert hosts_shown(page) == ["127.0.9.10", "127.0.9.8", "127.0.9.6", "127.0.9.4", "127.0.9.2"]
    page.reload()
    expect(page.locator("#llm-search")).to_have_value("llama3")
    expect(page.locator("#llm-registry-body tr[data-endpoint-id]")).to_have_count(5)
    assert hosts_shown(page)[0] == "127.0.9.10"

    # "+N more" opens the details; so does the keyboard on the host, and Escape closes them.
    page.fill("#llm-search", "")
    more = first.locator(".llm-models-more")
    expect(more).to_have_text("+2 more")  # 5 models, 3 shown
    more.click()
    details = page.locator("#llm-details")
    expect(details).to_be_visible()
    expect(details.locator(".details-table").first).to_contain_text("extra-4:7b")
    expect(details).to_contain_text("78 / 80 GiB")
    page.keyboard.press("Escape")
    expect(details).to_be_hidden()
    first.locator(".llm-host-btn").focus()
    page.keyboard.press("Enter")
    expect(details).to_be_visible()
    expect(details.locator("#llm-details-title")).to_contain_text("rack a")
    page.keyboard.press("Escape")
    expect(details).to_be_hidden()

    assert axe_violations(page) == []
    assert page.js_errors == []


def test_the_dashboard_works_at_390_px_and_in_dark_mode_and_passes_axe(stack, browser, operator_user):
    in_thread(seed_fleet)
    page = open_dashboard(browser, stack)
    page.set_viewport_size({"width": 390, "height": 844})
    after_layout(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing cut off or scrolled sideways
    row = page.locator("#llm-registry-body tr[data-endpoint-id]").first
    for cell in (".cell-status", ".cell-host", ".cell-models", ".cell-vram"):
        expect(row.locator(cell)).to_be_visible()
    assert axe_violations(page) == []
    page.set_viewport_size({"width": 1024, "height": 800})
    after_layout(page)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1024
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(15, 17, 21)"
    assert axe_violations(page) == []


def test_the_login_page_passes_axe_and_says_why_the_session_ended(stack, browser):
    page = browser.new_page()
    page.goto(f"{stack.url}/accounts/login/?ended=session&next=/dashboard/")
    expect(page.locator(".login-notice")).to_contain_text("session ended")
    assert axe_violations(page) == []


def test_logout_in_another_tab_sends_the_page_to_login_and_lost_permissions_remove_controls(
    stack, browser, operator_user
):
    in_thread(services.register_endpoint, "127.0.9.1")
    page = open_dashboard(browser, stack)
    expect(page.locator(".llm-remove-btn")).to_have_count(1)
    in_thread(lambda: User.objects.get(username="operator").user_permissions.remove(
        *Permission.objects.filter(codename="add_endpoint")))  # fmt: skip
    expect(page.locator("#llm-add-form")).to_have_count(0, timeout=5_000)
    expect(page.locator(".llm-remove-btn")).to_have_count(1)  # still allowed to remove
    in_thread(lambda: User.objects.get(username="operator").user_permissions.clear())
    expect(page.locator(".llm-remove-btn")).to_have_count(0, timeout=5_000)

    other = page.context.new_page()  # the same browser: the same session
    other.goto(f"{stack.url}/dashboard/")
    other.click(".logout-form button")
    page.wait_for_url("**/accounts/login/**", timeout=5_000)
    expect(page.locator(".login-notice")).to_contain_text("session ended")
    page.fill("input[name=username]", "operator")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{stack.url}/dashboard/")  # back where it was
