"""Read settings from the environment; a malformed value fails loudly at start-up, naming the variable."""

from __future__ import annotations

import logging
import math
import os
import re
import ssl
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

T = TypeVar("T")

# A host name as ALLOWED_HOSTS takes it: a name or IPv4 (optionally with a leading dot or "*."), an
# IPv6 literal in brackets, or "*".
_HOST_PATTERN = re.compile(r"^(\*|\.?(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|\[[0-9A-Fa-f:.]+\])$")
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]+$")
_HEADER_PATTERN = re.compile(r"^[A-Za-z0-9-]+$")


def env_str(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _env_number(name: str, default, cast, kind: str, minimum):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be {kind}, got {raw!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ImproperlyConfigured(f"{name} must be {kind}, got {raw!r}")
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    return _env_number(name, default, int, "a whole number", minimum)


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    return _env_number(name, default, float, "a number", minimum)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


def env_list(name: str, default: str) -> list[str]:
    raw = os.environ.get(name, default)
    return [item.strip() for item in raw.replace(" ", ",").split(",") if item.strip()]


def env_parsed(name: str, default: str, parse: Callable[[str], T]) -> T:
    """Parse the variable (or its default) with `parse`; a ValueError becomes a message naming it."""
    raw = env_str(name, default)
    try:
        return parse(raw)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"{name}: {exc} (got {raw!r})") from None


def env_hosts(name: str, default: str) -> list[str]:
    """Host names as ALLOWED_HOSTS takes them (no scheme, no port, no path)."""
    hosts = env_list(name, default)
    for host in hosts:
        if "://" in host or "/" in host:
            raise ImproperlyConfigured(f"{name} takes host names such as registry.example.com, not URLs: {host!r}")
        if not _HOST_PATTERN.match(host):
            raise ImproperlyConfigured(f"{name}: {host!r} is not a host name, IP address or [IPv6] literal")
    return hosts


def parse_origin(text: str) -> tuple[str, str, int]:
    """Split an origin such as https://registry.example.com:8443 into (scheme, host, port)."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an origin such as https://registry.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r} is not an origin: give only scheme, host and port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def env_origins(name: str, default: str, *, wildcards: bool = False) -> list[str]:
    """Origins (scheme://host[:port]); with `wildcards`, a host may start with `*.` (CSRF_TRUSTED_ORIGINS)."""
    origins = env_list(name, default)
    for origin in origins:
        checked = origin.replace("://*.", "://", 1) if wildcards else origin
        try:
            parse_origin(checked)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name}: {exc}") from None
    return [origin.rstrip("/") for origin in origins]


def env_name(name: str, default: str) -> str:
    """A name used as a Redis key prefix or queue name: letters, digits and _ . : - only."""
    value = env_str(name, default)
    if not _NAME_PATTERN.match(value):
        raise ImproperlyConfigured(f"{name} may hold only letters, digits and _ . : -, got {value!r}")
    return value


def env_header(name: str) -> str:
    """An HTTP header name (empty when unset), e.g. X-Forwarded-Proto."""
    value = env_str(name, "").strip()
    if value and not _HEADER_PATTERN.match(value):
        raise ImproperlyConfigured(f"{name} must be an HTTP header name such as X-Forwarded-Proto, got {value!r}")
    return value


def env_log_level(name: str, default: str) -> str:
    value = env_str(name, default).strip().upper()
    if not isinstance(logging.getLevelName(value), int):
        raise ImproperlyConfigured(f"{name} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
    return value


def env_url(name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env_str(name, default)
    parts = urlsplit(value)
    if parts.scheme not in schemes or (parts.scheme != "unix" and not parts.hostname):
        wanted = ", ".join(f"{s}://" for s in schemes)
        raise ImproperlyConfigured(f"{name} must be a URL starting with {wanted}, got {value!r}")
    try:
        _ = parts.port
    except ValueError:
        raise ImproperlyConfigured(f"{name} has an invalid port: {value!r}") from None
    return value


def env_ca_bundle(name: str) -> str:
    """A PEM file of CA certificates (empty when unset): it must exist and hold a certificate."""
    value = env_str(name, "").strip()
    if not value:
        return ""
    try:
        ssl.create_default_context(cafile=value)
    except FileNotFoundError:
        raise ImproperlyConfigured(f"{name}: no such file: {value!r}") from None
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        raise ImproperlyConfigured(f"{name}: {value!r} is not a readable PEM file of CA certificates") from None
    return os.path.abspath(value)


# Apprise URLs may hold commas (mailto://...?to=a@x,b@y): split on whitespace, and on a comma
# only where the next URL starts.
_URL_LIST_SPLIT = re.compile(r"\s+|,(?=\s*[A-Za-z][A-Za-z0-9+.-]*://)")


def env_url_list(name: str) -> list[str]:
    """Notification URLs (scheme://...), separated by spaces or commas."""
    urls = [u.strip().strip(",") for u in _URL_LIST_SPLIT.split(os.environ.get(name, "")) if u.strip().strip(",")]
    for url in urls:
        if "://" not in url:
            raise ImproperlyConfigured(f"{name} takes URLs such as ntfy://topic or json://host/path, got {url!r}")
    return urls
