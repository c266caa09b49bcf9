"""The WebSocket origin check: scheme, host AND port must be the hub's own.

Channels' AllowedHostsOriginValidator compares the host only, so a page served by anything else on
the same machine (http://localhost:9999) could drive the dashboard socket with the user's cookie.
"""

from __future__ import annotations

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from agentcom_site.env import parse_origin

DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin1")
    return None


def _scheme(scope) -> str:
    """http or https, as the browser sees the hub (a TLS-terminating proxy says so in its header)."""
    if scope.get("scheme") in ("wss", "https"):
        return "https"
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        header, value = proxy
        name = header.removeprefix("HTTP_").lower().replace("_", "-").encode()
        if (_header(scope, name) or "").split(",")[0].strip() == value:
            return "https"
    return "http"


def own_origin(scope) -> tuple[str, str, int] | None:
    """The origin the browser connected to (scheme, host from Host, its port), when Host is an allowed host."""
    host_header = _header(scope, b"host")
    if not host_header:
        return None
    domain, port = split_domain_port(host_header)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    scheme = _scheme(scope)
    try:
        number = int(port) if port else DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return scheme, domain.strip("[]"), number


def origin_allowed(scope) -> bool:
    origin = _header(scope, b"origin")
    if not origin:
        return False
    try:
        scheme, host, port = parse_origin(origin)
    except ValueError:
        return False
    host = host.strip("[]")
    if settings.ALLOWED_ORIGINS:
        return any((scheme, host, port) == _normal(allowed) for allowed in settings.ALLOWED_ORIGINS)
    return (scheme, host, port) == own_origin(scope)


def _normal(origin: str) -> tuple[str, str, int]:
    scheme, host, port = parse_origin(origin)
    return scheme, host.strip("[]"), port


class SameOriginValidator:
    """Refuse a WebSocket whose Origin is not the hub's own (or one of DJANGO_ALLOWED_ORIGINS)."""

    def __init__(self, application):
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not origin_allowed(scope):
            denier = WebsocketDenier()
            return await denier(scope, receive, send)
        return await self.application(scope, receive, send)
