"""Whether an open dashboard's session still holds, and what its user may do (fresh each time)."""

from __future__ import annotations

import hashlib
from importlib import import_module

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare


def user_group(user_pk: object) -> str:
    """The channel-layer group of one user's open dashboards (told of logouts and permission changes)."""
    return f"dashboard-user-{user_pk}"


def session_digest(session_key: str) -> str:
    """How events name a session without carrying its key (a credential) through Redis."""
    return hashlib.sha256(session_key.encode()).hexdigest()


def session_state(session_key: str | None, user_pk: object) -> tuple[str, bool, bool]:
    """("ok" | "ended" | "deactivated", may add endpoints, may remove endpoints).

    "ended": the session was logged out (in any tab), expired, or belongs to someone else
    now, or the password changed since; "deactivated": the account was switched off.
    """
    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key).load() if session_key else {}
    user = get_user_model().objects.filter(pk=user_pk).first()
    if user is None or str(data.get(SESSION_KEY)) != str(user.pk):
        return "ended", False, False
    if not user.is_active:
        return "deactivated", False, False
    if not constant_time_compare(data.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash()):
        return "ended", False, False
    return "ok", user.has_perm("registry.add_endpoint"), user.has_perm("registry.delete_endpoint")
