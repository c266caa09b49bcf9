"""A malformed setting stops start-up with a message naming the variable (never a 500 later)."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def read_settings(monkeypatch, tmp_path):
    """Run agentcom_site/settings.py afresh under the given environment; return its names."""

    def read(**env: str) -> dict:
        monkeypatch.setenv("AGENTCOM_RUN_DIR", str(tmp_path))
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return runpy.run_path(str(ROOT / "agentcom_site" / "settings.py"))

    return read


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("REGISTRY_ALLOWED_NETWORKS", "banana", "'banana' is not a network"),
        ("REGISTRY_ALLOWED_NETWORKS", "10.0.0.0/8,300.1.0.0/16", "'300.1.0.0/16' is not a network"),
        ("PROBE_TIMEOUT_SECONDS", "abc", "must be a number"),
        ("PROBE_INTERVAL_SECONDS", "nan", "must be a number"),
        ("PROBE_CHUNK_SIZE", "0", "at least 1"),
        ("DJANGO_DEBUG", "maybe", "true or false"),
        ("DJANGO_SECURE", "sure", "true or false"),
        ("DJANGO_ALLOWED_HOSTS", "https://registry.example.com", "not URLs"),
        ("DJANGO_ALLOWED_HOSTS", "bad_host!", "not a host name"),
        ("DJANGO_ALLOWED_ORIGINS", "registry.example.com", "not an origin"),
        ("DJANGO_ALLOWED_ORIGINS", "https://registry.example.com/dashboard/", "only scheme, host and port"),
        ("DJANGO_CSRF_TRUSTED_ORIGINS", "registry.example.com", "not an origin"),
        ("DJANGO_SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto: https", "HTTP header name"),
        ("REGISTRY_TRUSTED_PROXIES", "proxy.example.com", "not a network"),
        ("DJANGO_HSTS_SECONDS", "-1", "at least 0"),
        ("DATABASE_URL", "banana", "not a database URL"),
        ("REDIS_URL", "localhost:6379", "must be a URL starting with redis://"),
        ("REDIS_URL", "redis://localhost:port/0", "invalid port"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
        ("AGENTCOM_CELERY_QUEUE", "my queue", "only letters"),
        ("LOGIN_FAILURE_LIMIT", "0", "at least 1"),
        ("LOGIN_LOCKOUT_MINUTES", "soon", "must be a number"),
        ("PROBE_CA_BUNDLE", "/nonexistent/ca.pem", "no such file"),
    ],
)
def test_a_malformed_setting_is_refused_with_its_name(read_settings, name, value, says):
    with pytest.raises(ImproperlyConfigured) as refused:
        read_settings(**{name: value})
    assert name in str(refused.value)
    assert says in str(refused.value)


def test_well_formed_settings_are_taken(read_settings):
    names = read_settings(
        REGISTRY_ALLOWED_NETWORKS="127.0.0.0/8 ::1/128",
        DJANGO_ALLOWED_HOSTS="registry.example.com,.example.org,[::1],10.0.0.5",
        DJANGO_ALLOWED_ORIGINS="https://registry.example.com",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://*.example.org",
        DJANGO_SECURE="true",
        DJANGO_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        REGISTRY_TRUSTED_PROXIES="10.0.0.0/8",
        LOGIN_LOCKOUT_MINUTES="0",
        LOG_LEVEL="warning",
    )
    assert names["ALLOWED_HOSTS"] == ["registry.example.com", ".example.org", "[::1]", "10.0.0.5"]
    assert names["CSRF_TRUSTED_ORIGINS"] == ["https://*.example.org", "https://registry.example.com"]
    assert names["SESSION_COOKIE_SECURE"] and names["CSRF_COOKIE_SECURE"]
    assert names["SECURE_HSTS_SECONDS"] == 31_536_000
    assert names["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")
    assert names["AXES_COOLOFF_TIME"] is None  # locked until someone unlocks it
    assert names["LOGGING"]["root"]["level"] == "WARNING"


def test_plain_http_by_default_sets_no_secure_cookies_and_no_hsts(read_settings):
    names = read_settings()
    assert not names["SESSION_COOKIE_SECURE"] and not names["CSRF_COOKIE_SECURE"]
    assert names["SECURE_HSTS_SECONDS"] == 0
    assert "SECURE_PROXY_SSL_HEADER" not in names


def test_the_hub_does_not_start_with_a_malformed_setting(tmp_path):
    env = dict(os.environ, AGENTCOM_RUN_DIR=str(tmp_path), REGISTRY_ALLOWED_NETWORKS="banana")
    env.pop("DJANGO_SETTINGS_MODULE", None)
    started = subprocess.run(
        [sys.executable, "-c", "import agentcom_site.asgi"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert started.returncode != 0
    assert "ImproperlyConfigured: REGISTRY_ALLOWED_NETWORKS: 'banana' is not a network" in started.stderr


def test_a_ca_bundle_of_pem_certificates_is_taken_as_an_absolute_path(read_settings, tmp_path, monkeypatch):
    from devtools.tls import TestCA

    assert read_settings()["PROBE_CA_BUNDLE"] == ""  # unset: the system store
    ca = TestCA.create(tmp_path / "ca")
    monkeypatch.chdir(tmp_path)
    assert read_settings(PROBE_CA_BUNDLE=f"ca/{Path(ca.cert_path).name}")["PROBE_CA_BUNDLE"] == ca.cert_path


def test_a_ca_bundle_that_holds_no_certificate_is_refused(read_settings, tmp_path):
    (tmp_path / "notes.pem").write_text("not a certificate\n")
    with pytest.raises(ImproperlyConfigured, match="PROBE_CA_BUNDLE: .* is not a readable PEM file of CA certificates"):
        read_settings(PROBE_CA_BUNDLE=str(tmp_path / "notes.pem"))
