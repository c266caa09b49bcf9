"""Every page carries a Content-Security-Policy without inline script; HTTPS turns on Secure cookies and HSTS."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import PASSWORD

PAGES = ["/accounts/login/", "/dashboard/", "/admin/", "/admin/registry/endpoint/", "/api/v1/docs", "/healthz"]


def directives(response) -> dict[str, list[str]]:
    policy = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_a_policy_allowing_only_the_hubs_own_scripts(operator_client, path):
    operator_client.get("/")  # any page: the policy is on every answer, errors included
    response = operator_client.get(path)
    assert response.status_code == 200, path
    policy = directives(response)
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no CDN
    assert policy["connect-src"] == ["'self'", "ws://testserver"]
    assert policy["frame-ancestors"] == ["'none'"]


def test_pages_served_over_https_allow_only_a_secure_socket(operator_client, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    response = operator_client.get("/dashboard/", secure=True)
    assert directives(response)["connect-src"] == ["'self'", "wss://testserver"]
    assert response["Strict-Transport-Security"] == "max-age=3600"


def test_hsts_is_never_sent_over_plain_http(client, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    assert "Strict-Transport-Security" not in client.get("/accounts/login/")


def test_secure_setting_marks_the_session_and_csrf_cookies_secure(operator, settings):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True
    client = Client()
    client.get("/accounts/login/", secure=True)
    answer = client.post(
        "/accounts/login/", {"username": "operator", "password": PASSWORD, "next": "/dashboard/"}, secure=True
    )
    assert answer.status_code == 302
    assert client.cookies["sessionid"]["secure"] and client.cookies["csrftoken"]["secure"]


def test_behind_a_tls_proxy_the_forwarded_scheme_counts_as_https(client, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    response = client.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https", HTTP_HOST="localhost")
    assert response["Strict-Transport-Security"] == "max-age=3600"
    assert directives(response)["connect-src"] == ["'self'", "wss://localhost"]
