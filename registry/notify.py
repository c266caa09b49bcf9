"""Sending one notification: a signed JSON webhook (httpx) or an Apprise URL. No Django imports.

Targets are configured by operators, so they are not limited to REGISTRY_ALLOWED_NETWORKS;
every send has a hard timeout, so a target that hangs costs at most that long.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

SIGNATURE_HEADER = "X-AgentCom-Signature"
TIMESTAMP_HEADER = "X-AgentCom-Timestamp"
MAX_ERROR_CHARS = 300
WEB_SCHEMES = {"http", "https", "json", "jsons", "form", "forms", "xml", "xmls"}


class SendError(Exception):
    """The target did not take the message (down, refused, timed out, answered an error)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age: float = 300, now=None) -> bool:
    """Check a webhook as a receiver would: the signature matches and the timestamp is recent."""
    now = time.time() if now is None else now
    try:
        fresh = abs(now - int(timestamp)) <= max_age
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def send_webhook(url: str, secret: str, payload: dict, *, timeout: float) -> None:
    """POST the payload as JSON, signed with the secret; raise SendError unless it answers 2xx."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "agentcom-registry-alerts",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    try:
        # Connect, send and the answer's status line each within `timeout`; the answer's body is
        # never read, so a target cannot hold the worker by trickling one.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            with client.stream("POST", url, content=body, headers=headers) as reply:
                status = reply.status_code
    except httpx.TimeoutException:
        raise SendError(f"timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise SendError(_short(f"{exc.__class__.__name__}: {exc}")) from None
    if not 200 <= status < 300:
        raise SendError(f"HTTP {status}")


def with_timeouts(url: str, timeout: float) -> str:
    """The Apprise URL with connect and read timeouts (cto, rto) unless the operator set them."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.setdefault("cto", f"{timeout:g}")
    query.setdefault("rto", f"{timeout:g}")
    return urlunsplit(parts._replace(query=urlencode(query)))


def send_apprise(url: str, title: str, body: str, *, timeout: float) -> None:
    """Notify one Apprise URL; raise SendError with Apprise's own words when it fails."""
    import apprise  # imported on first use: ~0.3 s that processes which never alert need not pay

    notifier = apprise.Apprise()
    if not notifier.add(with_timeouts(url, timeout)):
        raise SendError("Apprise does not understand this URL, or its service needs a package the hub lacks")
    with apprise.LogCapture(level=apprise.logging.WARNING, fmt="%(message)s") as log:
        ok = notifier.notify(title=title, body=body)
        if not ok:
            lines = [line for line in log.getvalue().splitlines() if line.strip()]
            raise SendError(_short(lines[-1] if lines else "Apprise could not send"))


def mask_url(url: str) -> str:
    """A URL fit for lists and logs: scheme and host only (tokens live in paths, users, queries)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return "…"
    # Only web URLs have a host worth showing; in slack://T000/B000/XXX the "host" is a token.
    if parts.scheme.lower() in WEB_SCHEMES and parts.hostname:
        return f"{parts.scheme}://{parts.hostname}/…"
    return f"{parts.scheme}://…"


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
