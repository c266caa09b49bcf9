"""Personas and shared fixtures: an operator, a viewer, tokens of each scope, a fake Ollama fleet."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from registry import services
from registry.models import Token
from registry.rows import forget_cached_models
from registry.uptime import forget_cached_uptimes

PASSWORD = "correct horse battery staple"


def _user(username: str, *, staff: bool, perms: list[str]) -> User:
    user = User.objects.create_user(username, password=PASSWORD, is_staff=staff)
    for perm in perms:
        user.user_permissions.add(Permission.objects.get(codename=perm, content_type__app_label="registry"))
    return user


@pytest.fixture(autouse=True, scope="session")
def _no_publishing_after_the_tests(django_db_setup):
    """Events still pending when the suite ends would be published at exit against a dropped database."""
    yield
    from dashboard.broadcast import publisher

    publisher.discard()


@pytest.fixture(autouse=True)
def _fresh_token_cache():
    """Token ids repeat between tests (rolled back); a cached token must not leak into the next."""
    services.forget_process_caches()
    forget_cached_models()
    forget_cached_uptimes()


@pytest.fixture
def operator(db) -> User:
    """Staff who may add and remove endpoints."""
    return _user("operator", staff=True, perms=["add_endpoint", "delete_endpoint", "change_endpoint", "view_endpoint"])


@pytest.fixture
def viewer(db) -> User:
    """Logged in, may only watch."""
    return _user("viewer", staff=False, perms=[])


@pytest.fixture
def operator_client(operator) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    return client


@pytest.fixture
def admin_token(db) -> str:
    return services.create_token(Token.Scope.ADMIN, "ci-admin")[1]


@pytest.fixture
def sidecar_token(db) -> str:
    return services.create_token(Token.Scope.SIDECAR, "gpu-01")[1]


@pytest.fixture
def agent_token(db) -> str:
    return services.create_token(Token.Scope.AGENT, "planner")[1]


@pytest.fixture
def revoked_token(db) -> str:
    token, raw = services.create_token(Token.Scope.ADMIN, "old")
    services.revoke_tokens([token.id])
    return raw


@pytest.fixture
def api(db):
    """A CSRF-enforcing client that sends JSON with an optional bearer token."""

    class Api:
        def __init__(self):
            self.client = Client(enforce_csrf_checks=True)

        def _headers(self, token):
            return {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}

        def get(self, url, token=None):
            return self.client.get(url, **self._headers(token))

        def post(self, url, body, token=None, raw=False):
            data = body if raw else json.dumps(body)
            return self.client.post(url, data, content_type="application/json", **self._headers(token))

        def delete(self, url, token=None):
            return self.client.delete(url, **self._headers(token))

    return Api()


@pytest.fixture
def fake_fleet():
    """A real HTTP server speaking Ollama's JSON, many endpoints in one process."""
    from devtools.fake_ollama import FakeFleet

    fleet = FakeFleet()
    fleet.start()
    yield fleet
    fleet.stop()
