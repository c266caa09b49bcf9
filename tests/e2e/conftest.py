"""Browser-suite fixtures: headless Chromium and a staff operator who may add and remove."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User

from devtools.browser import CHROMIUM, CHROMIUM_ARGS
from tests.conftest import PASSWORD
from tests.live import in_thread

sync_api = pytest.importorskip("playwright.sync_api")


def require_chromium() -> None:
    """Skip the calling test module without Chromium (CI installs it, .ci/run: there it is an error)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("Chromium is required in CI: apt-get install -y chromium")
        pytest.skip("Chromium is not installed (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        yield chromium
        chromium.close()


@pytest.fixture
def operator_user(db):
    def make():
        user = User.objects.create_user("operator", password=PASSWORD, is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(codename__in=["add_endpoint", "delete_endpoint"]))
        return user

    return in_thread(make)
