"""Alert targets in Django admin: secrets stay hidden, bad targets are refused, a test can be sent."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from registry import services
from registry.models import Alert, AlertDelivery, AlertTarget
from tests.alerts.helpers import SECRET

pytestmark = pytest.mark.django_db

SLACK = "slack://T000AAAA/B000BBBB/XXXXsecretXXXX"


@pytest.fixture
def admin_client(client, db):
    client.force_login(User.objects.create_superuser("root", "", "pw-for-tests"))
    return client


def test_secrets_and_url_tokens_do_not_show_in_the_list_or_the_form(admin_client):
    slack = AlertTarget.objects.create(label="team slack", kind="apprise", url=SLACK)
    hook = AlertTarget.objects.create(label="pager", kind="webhook", url="https://hooks.example/x/abc", secret=SECRET)

    listing = admin_client.get("/admin/registry/alerttarget/").content.decode()
    assert "team slack" in listing and "slack://…" in listing and "https://hooks.example/…" in listing
    for page in (
        listing,
        admin_client.get(f"/admin/registry/alerttarget/{slack.id}/change/").content.decode(),
        admin_client.get(f"/admin/registry/alerttarget/{hook.id}/change/").content.decode(),
    ):
        assert "XXXXsecretXXXX" not in page and "T000AAAA" not in page
        assert SECRET not in page and "/x/abc" not in page


def test_editing_a_target_keeps_url_and_secret_left_blank(admin_client):
    hook = AlertTarget.objects.create(label="pager", kind="webhook", url="https://hooks.example/x", secret=SECRET)
    reply = admin_client.post(
        f"/admin/registry/alerttarget/{hook.id}/change/",
        {"label": "pager 2", "kind": "webhook", "url": "", "secret": "", "enabled": "on"},
    )
    assert reply.status_code == 302
    hook.refresh_from_db()
    assert (hook.label, hook.url, hook.secret) == ("pager 2", "https://hooks.example/x", SECRET)


@pytest.mark.parametrize(
    ("kind", "url", "secret", "error"),
    [
        ("webhook", "https://hooks.example/x", "", "A webhook needs a secret"),
        ("webhook", "ftp://hooks.example/x", SECRET, "starts with http:// or https://"),
        ("apprise", "nosuchservice://abc", "", "Apprise does not understand this URL"),
        ("apprise", "", "", "Give the URL to send to."),
    ],
)
def test_a_target_that_could_never_work_is_refused(admin_client, kind, url, secret, error):
    reply = admin_client.post(
        "/admin/registry/alerttarget/add/", {"label": "x", "kind": kind, "url": url, "secret": secret, "enabled": "on"}
    )
    assert reply.status_code == 200
    assert error in reply.content.decode()
    assert not AlertTarget.objects.exists()


def test_send_test_notification_queues_a_test_message_to_the_selected_targets(
    admin_client, receivers, django_capture_on_commit_callbacks, monkeypatch
):
    receiver = receivers()
    hook = AlertTarget.objects.create(label="pager", kind="webhook", url=receiver.url, secret=SECRET, enabled=False)
    AlertTarget.objects.create(label="other", kind="webhook", url="https://hooks.example/y", secret=SECRET)
    queued = []
    monkeypatch.setattr("registry.services.alerts._queue_delivery", queued.append)

    with django_capture_on_commit_callbacks(execute=True):
        reply = admin_client.post(
            "/admin/registry/alerttarget/",
            {"action": "send_test", "_selected_action": [hook.id]},
            follow=True,
        )
    assert "Queued a test notification to 1 target(s)" in reply.content.decode()
    [delivery] = AlertDelivery.objects.all()
    assert queued == [delivery.id] and delivery.target_label == "pager"

    assert services.deliver(delivery.id) == "sent"
    [got] = receiver.requests
    assert got.signature_valid(SECRET)
    assert got.json["event"] == "test" and Alert.objects.get().kind == "test"
    alerts_page = admin_client.get("/admin/registry/alert/").content.decode()
    assert "Test notification from the LLM registry" in alerts_page and "1 sent" in alerts_page
    detail = admin_client.get(f"/admin/registry/alert/{Alert.objects.get().id}/change/").content.decode()
    assert "pager" in detail and "sent" in detail
