"""ASGI entry point: HTTP through Django, WebSockets through Channels (origin and login checked)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentcom_site.settings")
# Build the Django app (and so the app registry) before importing anything that uses models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from agentcom_site import tuning  # noqa: E402
from agentcom_site.origins import SameOriginValidator  # noqa: E402
from dashboard.routing import websocket_urlpatterns  # noqa: E402
from registry.ingest import ReportRoute, ReportSocket  # noqa: E402
from registry.routeasgi import RouteFastPath  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Static files (one CSS, one JS) are served by the app itself so that `make run`
        # needs no web server in front; behind a proxy, serve STATIC_ROOT there instead.
        # Well-formed sidecar reports take a lean path (registry/ingest.py), and so do routes
        # answered from memory (registry/routeasgi.py); the rest is Django.
        "http": ReportRoute(RouteFastPath(ASGIStaticFilesHandler(django_asgi_app))),
        # Sidecars may keep one socket open for their reports (/ws/sidecar/, bearer token, no
        # browser origin); every other socket is a logged-in dashboard from the hub's own origin
        # (scheme, host and port: agentcom_site/origins.py).
        "websocket": ReportSocket(SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
    }
)
# Last: what is alive now lives as long as the process (garbage collection leaves it alone).
tuning.tune_web_process()
