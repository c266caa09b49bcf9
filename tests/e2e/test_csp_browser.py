"""The login page, the dashboard, the admin and the API docs work in Chromium under the Content-Security-Policy.

Chromium reports every blocked script, style, image or connection on the console; any such report fails.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from devtools.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import PASSWORD
from tests.e2e.conftest import require_chromium
from tests.live import LiveStack, in_thread

require_chromium()

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.e2e, pytest.mark.live, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def hub(tmp_path):
    live = LiveStack(tmp_path, components=("daphne",)).start()
    yield live
    live.stop()


def test_every_page_works_with_no_policy_violation(hub):
    in_thread(User.objects.create_superuser, "root", "", PASSWORD)
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        reports: list[str] = []
        # Violations are console errors that name the policy; script errors count too. (A missing
        # /favicon.ico on the admin pages is a console error of its own, and not this test's business.)
        page.on("console", lambda msg: reports.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.on("pageerror", lambda exc: reports.append(str(exc)))

        page.goto(f"{hub.url}/dashboard/")
        page.fill("input[name=username]", "root")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{hub.url}/dashboard/")
        expect(page.locator("#llm-connection-state")).to_have_text("live", timeout=10_000)  # the socket opened

        page.goto(f"{hub.url}/admin/")
        expect(page.locator("#site-name")).to_be_visible()
        page.goto(f"{hub.url}/admin/registry/endpoint/add/")
        page.fill("input[name=address]", "gpu-csp")
        page.click("input[name=_save]")
        expect(page.locator(".messagelist")).to_contain_text("gpu-csp")
        page.goto(f"{hub.url}/api/v1/docs")
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("AgentCom LLM Registry", timeout=10_000)
        assert reports == []

        # The listener hears violations: an inline script, as an injected page would add, is blocked and reported.
        page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.ran = 1'; document.body.append(s); }"
        )
        assert page.evaluate("() => window.ran") is None
        assert any("Content Security Policy" in text for text in reports), reports
        browser.close()
