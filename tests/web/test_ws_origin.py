"""The dashboard socket opens only from the hub's own origin: scheme, host AND port."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from agentcom_site.asgi import application
from agentcom_site.origins import origin_allowed

pytestmark = [pytest.mark.django_db(transaction=True)]


def scope(origin: str | None, host: str | None = "localhost:8000", scheme: str = "ws", **headers: str) -> dict:
    pairs = [(b"origin", origin), (b"host", host), *((k.encode(), v) for k, v in headers.items())]
    return {"type": "websocket", "scheme": scheme, "headers": [(k, v.encode()) for k, v in pairs if v is not None]}


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("http://localhost:8000", "localhost:8000", "ws", True),
        ("http://LOCALHOST:8000", "localhost:8000", "ws", True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", "ws", True),
        ("http://[::1]:8000", "[::1]:8000", "ws", True),
        ("http://localhost", "localhost", "ws", True),  # port 80 on both sides
        ("https://localhost", "localhost:443", "wss", True),
        ("http://localhost:9999", "localhost:8000", "ws", False),  # another server on this machine
        ("https://localhost:8000", "localhost:8000", "ws", False),  # another scheme
        ("http://localhost:8000", "localhost:8000", "wss", False),
        ("http://127.0.0.1:8000", "localhost:8000", "ws", False),  # another host
        ("http://evil.example.com:8000", "evil.example.com:8000", "ws", False),  # DNS rebinding: not an allowed host
        (None, "localhost:8000", "ws", False),
        ("null", "localhost:8000", "ws", False),
        ("http://localhost:8000", None, "ws", False),
    ],
)
def test_only_the_hubs_own_origin_may_open_the_socket(origin, host, scheme, allowed):
    assert origin_allowed(scope(origin, host, scheme)) is allowed


def test_behind_a_tls_proxy_the_forwarded_scheme_is_the_origins(settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.ALLOWED_HOSTS = ["registry.example.com"]
    proxied = {"x-forwarded-proto": "https"}
    assert origin_allowed(scope("https://registry.example.com", "registry.example.com", **proxied))
    assert not origin_allowed(scope("http://registry.example.com", "registry.example.com", **proxied))
    assert not origin_allowed(scope("https://registry.example.com", "registry.example.com"))


def test_explicit_allowed_origins_replace_the_own_origin_rule(settings):
    settings.ALLOWED_ORIGINS = ["https://registry.example.com"]
    assert origin_allowed(scope("https://registry.example.com:443", "127.0.0.1:8000"))
    assert not origin_allowed(scope("https://registry.example.com:8443", "127.0.0.1:8000"))
    assert not origin_allowed(scope("http://localhost:8000", "localhost:8000"))


@database_sync_to_async
def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def open_socket(user, origin: bytes) -> tuple[bool, WebsocketCommunicator]:
    headers = [(b"host", b"localhost:8000"), (b"origin", origin), (b"cookie", await session_cookie(user))]
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    return connected, communicator


async def test_a_page_on_another_port_of_the_same_host_cannot_drive_the_socket(operator):
    connected, communicator = await open_socket(operator, b"http://localhost:9999")
    assert not connected
    connected, communicator = await open_socket(operator, b"http://localhost:8000")
    assert connected
    await communicator.disconnect()
