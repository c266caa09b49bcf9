"""Login lockout (django-axes): who the client is, and the page a locked-out client sees."""

from __future__ import annotations

import math

from django.conf import settings
from django.shortcuts import render


def client_ip(request) -> str:
    """The client's address: REMOTE_ADDR, or behind a proxy in REGISTRY_TRUSTED_PROXIES its X-Forwarded-For."""
    from registry.services import client_address  # the one rule, shared with sidecar reports

    peer = request.META.get("REMOTE_ADDR", "")
    return client_address(peer, request.META.get("HTTP_X_FORWARDED_FOR")) or peer


def lockout_response(request, original_response=None, credentials=None):
    """The login page with a plain message, 429, and Retry-After when the lockout ends by itself."""
    cooloff = settings.AXES_COOLOFF_TIME
    minutes = math.ceil(cooloff.total_seconds() / 60) if cooloff else None
    context = {
        "locked_out": True,
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "lockout_minutes": minutes,
        "client_ip": client_ip(request),
        "next": request.POST.get("next") or request.GET.get("next") or "",
    }
    response = render(request, "registration/login.html", context, status=429)
    if cooloff:
        response["Retry-After"] = str(math.ceil(cooloff.total_seconds()))
    return response
