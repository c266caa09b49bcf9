"""Browser-suite fixtures: headless Chromium and a staff operator who may add and remove."""

from __future__ import annotations

import shutil

import pytest
from django.contrib.auth.models import Permission, User

from tests.conftest import PASSWORD
from tests.live import in_thread

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # the tests skip themselves without it
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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
