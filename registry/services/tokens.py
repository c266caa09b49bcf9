"""API tokens: creation, the per-process cache, revocation."""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Max
from django.utils import timezone

from registry.models import Token
from registry.schemas import split_host
from registry.services.common import RegistryError

logger = logging.getLogger(__name__)


def create_token(scope: str, label: str, *, host: str = "") -> tuple[Token, str]:
    """Create a token (a sidecar token optionally bound to `host`); the raw value is returned once."""
    if scope not in Token.Scope.values:
        raise RegistryError("invalid_scope", f"scope must be one of {', '.join(Token.Scope.values)}.")
    if not label.strip():
        raise RegistryError("invalid_label", "label is required.")
    if host:
        if scope != Token.Scope.SIDECAR:
            raise RegistryError("invalid_host", "only sidecar tokens are bound to a host.")
        try:
            host = split_host(host)[0]
        except ValueError as exc:
            raise RegistryError("invalid_host", str(exc)) from None
    raw = f"agc_{scope[:3]}_{secrets.token_urlsafe(32)}"
    token = Token.objects.create(
        scope=scope, label=label.strip()[:100], token_hash=Token.hash(raw), prefix=raw[:12], host=host
    )
    return token, raw


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a request needs to know of its token (cached in memory, never the raw value)."""

    id: int
    scope: str
    label: str
    host: str = ""  # the machine a sidecar token is bound to ("" until its first report)


# Tokens are cached per process: a report every 10 s from each of 1,000 sidecars must not
# cost a database lookup each. A revocation reaches every process within TOKEN_CACHE_SECONDS:
# that often one cheap query compares the revocation mark with the one seen before.
_token_cache: dict[str, TokenInfo | None] = {}
_token_used: dict[int, float] = {}  # token id -> when its last_used_at was last written (monotonic)
_token_mark: dict[str, object] = {"checked": -math.inf, "revoked": None}
_TOKEN_CACHE_MAX = 10_000


def token_cache_fresh() -> bool:
    """Whether the cache was checked against revocations within TOKEN_CACHE_SECONDS."""
    return time.monotonic() - _token_mark["checked"] < settings.TOKEN_CACHE_SECONDS


def refresh_token_cache() -> None:
    """Drop the cache if any token was revoked (or created) since the last check."""
    mark = Token.objects.aggregate(n=Count("id"), revoked=Count("revoked_at"), last=Max("revoked_at"))
    if mark != _token_mark["revoked"]:
        _token_cache.clear()
        _token_mark["revoked"] = mark
    _token_mark["checked"] = time.monotonic()


def cached_token(raw: str) -> tuple[bool, TokenInfo | None]:
    """(hit, token) from this process's cache, without touching the database."""
    if not raw or len(raw) > 200:
        return True, None
    if not token_cache_fresh():
        return False, None
    digest = Token.hash(raw)
    return (True, _token_cache[digest]) if digest in _token_cache else (False, None)


def authenticate_token(raw: str, *, record_use: bool = True, now: datetime | None = None) -> TokenInfo | None:
    """Return the active token for `raw` (cached, see TOKEN_CACHE_SECONDS), recording its use."""
    if not raw or len(raw) > 200:
        return None
    if not token_cache_fresh():
        refresh_token_cache()
    digest = Token.hash(raw)
    if digest in _token_cache:
        info = _token_cache[digest]
    else:
        row = (
            Token.objects.filter(token_hash=digest, revoked_at__isnull=True)
            .values("id", "scope", "label", "host")
            .first()
        )
        info = TokenInfo(**row) if row else None
        if len(_token_cache) >= _TOKEN_CACHE_MAX:
            _token_cache.clear()  # a flood of made-up tokens must not grow memory
        _token_cache[digest] = info
    if info is not None and record_use:
        note_tokens_used([info.id], now=now)
    return info


def note_tokens_used(token_ids: Iterable[int], *, now: datetime | None = None) -> None:
    """Record that tokens were used: written at most once a minute per token and process, the
    tokens of a batch that are due in one UPDATE (a fleet that started together falls due together)."""
    clock = time.monotonic()
    due = [i for i in set(token_ids) if clock - _token_used.get(i, -math.inf) >= 60]
    if not due:
        return
    for token_id in due:
        _token_used[token_id] = clock
    Token.objects.filter(id__in=due).update(last_used_at=now or timezone.now())


def token_use_noted(token_id: int) -> bool:
    """Whether this process recorded the token's use within the last minute (so a lean path that
    writes nothing may serve it without losing track of last_used_at)."""
    return time.monotonic() - _token_used.get(token_id, -math.inf) < 60


def revoke_tokens(ids: Iterable[int], *, now: datetime | None = None) -> int:
    """Revoke tokens: at once in this process, within TOKEN_CACHE_SECONDS in the others."""
    count = Token.objects.filter(id__in=list(ids), revoked_at__isnull=True).update(revoked_at=now or timezone.now())
    forget_cached_tokens()
    return count


def forget_cached_tokens() -> None:
    """Drop this process's token cache (after a revocation; between tests)."""
    _token_cache.clear()
    _token_used.clear()
    _token_mark.update(checked=-math.inf, revoked=None)


def bind_token(token: TokenInfo, host: str) -> TokenInfo:
    """Bind a sidecar token that is not bound yet to `host` (its first report); return it bound."""
    if token.scope != Token.Scope.SIDECAR or token.host:
        return token
    Token.objects.filter(id=token.id, host="").update(host=host)
    bound = Token.objects.filter(id=token.id).values_list("host", flat=True).first() or host
    token = TokenInfo(token.id, token.scope, token.label, bound)
    for digest, cached in list(_token_cache.items()):
        if cached is not None and cached.id == token.id:
            _token_cache[digest] = token
    return token
