"""Registry signals -> the process's publisher, once the transaction has committed."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import m2m_changed, post_save
from django.dispatch import receiver

from dashboard.broadcast import publisher
from dashboard.sessions import session_digest, user_group
from registry import signals

logger = logging.getLogger(__name__)
User = get_user_model()


@receiver(signals.endpoints_changed)
def _on_endpoints_changed(sender, ids, **kwargs):
    ids = list(ids)
    transaction.on_commit(lambda: publisher.add(changed=ids))


@receiver(signals.endpoints_checked)
def _on_endpoints_checked(sender, ids, at, **kwargs):
    checked = dict.fromkeys(ids, at.isoformat())
    transaction.on_commit(lambda: publisher.add(checked=checked))


@receiver(signals.endpoints_removed)
def _on_endpoints_removed(sender, ids, **kwargs):
    ids = list(ids)
    transaction.on_commit(lambda: publisher.add(removed=ids))


@receiver(signals.resources_changed)
def _on_resources_changed(sender, hosts, **kwargs):
    hosts = list(hosts)
    transaction.on_commit(lambda: publisher.add(hosts=hosts))


# --- sessions and permissions: open dashboards re-check theirs at once ------------------------


def _tell_users(pks, event: dict | None = None) -> None:
    """Ask the open dashboards of these users to re-check their session and permissions."""
    pks = sorted(set(pks))
    if not pks:
        return
    event = event or {"type": "session.check"}

    def send() -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        try:
            for pk in pks:
                async_to_sync(layer.group_send)(user_group(pk), event)
        except Exception:  # Redis away: open pages still notice at their next periodic check
            logger.warning("could not tell open dashboards of a session change", exc_info=True)

    transaction.on_commit(send)


@receiver(user_logged_out)
def _on_logout(sender, request, user, **kwargs):
    # Sent before the session is flushed, so a check now would still find it: name the session.
    key = getattr(getattr(request, "session", None), "session_key", None)
    if user is not None and key:
        _tell_users([user.pk], {"type": "session.ended", "session": session_digest(key)})


@receiver(post_save, sender=settings.AUTH_USER_MODEL)
def _on_user_saved(sender, instance, created, update_fields=None, **kwargs):
    # is_active, is_superuser or the password may have changed; a login only saves last_login.
    if not created and set(update_fields or ()) != {"last_login"}:
        _tell_users([instance.pk])


def _changed_users(instance, action: str, reverse: bool, pk_set, users_of) -> list:
    """The users an m2m change touches: on post_add/remove/clear, or before a reverse clear."""
    if not reverse:
        return list(users_of(instance)) if action.startswith("post_") else []
    if action == "pre_clear":
        return list(users_of(instance))
    return list(pk_set or []) if action in ("post_add", "post_remove") else []


@receiver(m2m_changed, sender=User.user_permissions.through)
@receiver(m2m_changed, sender=User.groups.through)
def _on_user_permissions(sender, instance, action, reverse, pk_set, **kwargs):
    # Forward: instance is the user. Reverse: instance is a permission or group, pk_set users.
    _tell_users(
        _changed_users(
            instance,
            action,
            reverse,
            pk_set,
            lambda obj: [obj.pk] if not reverse else obj.user_set.values_list("pk", flat=True),
        )
    )


@receiver(m2m_changed, sender=Group.permissions.through)
def _on_group_permissions(sender, instance, action, reverse, pk_set, **kwargs):
    # Forward: instance is the group. Reverse: instance is a permission, pk_set groups.
    if reverse and action in ("post_add", "post_remove"):
        _tell_users(User.objects.filter(groups__in=pk_set or []).values_list("pk", flat=True))
        return
    users = (
        (lambda g: g.user_set.values_list("pk", flat=True))
        if not reverse
        else (lambda p: User.objects.filter(groups__permissions=p).values_list("pk", flat=True))
    )
    _tell_users(_changed_users(instance, action, reverse, pk_set, users))
