"""Login lockout (django-axes): who the client is, and the page a locked-out client sees."""

from __future__ import annotations

import ipaddress
import math

from django.conf import settings
from django.shortcuts import render


def client_ip(request) -> str:
    """The client's address: REMOTE_ADDR, or the nearest untrusted hop of X-Forwarded-For behind a trusted proxy."""
    remote = request.META.get("REMOTE_ADDR", "")
    hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
    address = remote
    # Walk back from the hub: every hop a trusted proxy added is believed, the first other one is the client.
    while hops and _trusted(address):
        address = hops.pop()
    return address


def _trusted(address: str) -> bool:
    if not settings.TRUSTED_PROXIES:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in settings.TRUSTED_PROXIES)


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
