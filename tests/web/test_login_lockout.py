"""Wrong passwords lock a client out of the login page and the admin's; `axes_reset*` unlocks it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client

from tests.conftest import PASSWORD

LOGIN_PAGES = ["/accounts/login/", "/admin/login/"]


def log_in(client: Client, page: str, username: str, password: str, **extra):
    return client.post(page, {"username": username, "password": password, "next": "/dashboard/"}, **extra)


def fail_until_locked(client: Client, page: str, username: str, limit: int, **extra):
    for _ in range(limit - 1):
        assert log_in(client, page, username, "wrong", **extra).status_code == 200  # the form again
    return log_in(client, page, username, "wrong", **extra)


@pytest.mark.parametrize("page", LOGIN_PAGES)
def test_wrong_passwords_lock_the_address_out_with_a_message(operator, settings, page):
    client = Client()
    locked = fail_until_locked(client, page, "operator", settings.AXES_FAILURE_LIMIT)
    assert locked.status_code == 429
    assert locked["Retry-After"] == str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    text = locked.content.decode()
    assert "Too many failed logins from your address (127.0.0.1)" in text
    assert "for 15 minutes" in text
    assert "axes_reset_ip 127.0.0.1" in text
    # Even the right password is refused now, on both login pages, for any account.
    for other_page in LOGIN_PAGES:
        refused = log_in(client, other_page, "operator", PASSWORD)
        assert refused.status_code == 429
        assert "_auth_user_id" not in client.session


@pytest.mark.parametrize(
    ("command", "args"),
    [("axes_reset_ip", ["127.0.0.1"]), ("axes_reset", [])],
)
def test_the_unlock_command_restores_access(operator, settings, command, args):
    client = Client()
    assert fail_until_locked(client, "/accounts/login/", "operator", settings.AXES_FAILURE_LIMIT).status_code == 429
    call_command(command, *args)
    answer = log_in(client, "/accounts/login/", "operator", PASSWORD)
    assert answer.status_code == 302 and answer["Location"] == "/dashboard/"
    assert client.get("/dashboard/").status_code == 200


def test_a_lockout_ends_by_itself_after_the_lockout_time(operator, settings):
    client = Client()
    assert fail_until_locked(client, "/accounts/login/", "operator", settings.AXES_FAILURE_LIMIT).status_code == 429
    failed_at = AccessAttempt.objects.get().attempt_time
    AccessAttempt.objects.update(attempt_time=failed_at - timedelta(minutes=14))  # 14 minutes later
    assert log_in(client, "/accounts/login/", "operator", PASSWORD).status_code == 429
    AccessAttempt.objects.update(attempt_time=failed_at - timedelta(minutes=16))  # 16 minutes later
    assert log_in(client, "/accounts/login/", "operator", PASSWORD).status_code == 302


def test_a_forged_forwarded_for_header_does_not_dodge_the_lockout(operator, settings):
    client = Client()
    for attempt in range(settings.AXES_FAILURE_LIMIT):
        answer = log_in(client, "/accounts/login/", "operator", "wrong", HTTP_X_FORWARDED_FOR=f"203.0.113.{attempt}")
    assert answer.status_code == 429
    assert "(127.0.0.1)" in answer.content.decode()


def test_behind_a_trusted_proxy_each_client_is_counted_apart(operator, settings):
    settings.REGISTRY_TRUSTED_PROXIES = "127.0.0.0/8"
    client = Client()
    locked = fail_until_locked(
        client, "/accounts/login/", "operator", settings.AXES_FAILURE_LIMIT, HTTP_X_FORWARDED_FOR="203.0.113.7"
    )
    assert locked.status_code == 429 and "(203.0.113.7)" in locked.content.decode()
    other = log_in(client, "/accounts/login/", "operator", PASSWORD, HTTP_X_FORWARDED_FOR="198.51.100.2")
    assert other.status_code == 302


def test_a_successful_login_does_not_wipe_earlier_failures(operator, viewer, settings):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "/accounts/login/", "operator", "wrong")
    assert log_in(Client(), "/accounts/login/", "viewer", PASSWORD).status_code == 302
    assert log_in(client, "/accounts/login/", "operator", "wrong").status_code == 429
