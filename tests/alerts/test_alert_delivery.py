"""Delivering alerts: retries with backoff, per-target timeouts, Apprise URLs, the signature."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from agentcom_site.env import env_url_list
from registry import notify, services
from registry.models import AlertDelivery, AlertTarget
from registry.tasks import send_alert
from tests.alerts.helpers import SECRET, endpoint, flip

pytestmark = pytest.mark.django_db


def one_delivery(receiver_url: str) -> AlertDelivery:
    AlertTarget.objects.create(label="hook", kind="webhook", url=receiver_url, secret=SECRET)
    flip(endpoint(), "healthy", "unhealthy", reason="connection refused")
    services.process_alerts()
    return AlertDelivery.objects.get()


def test_a_receiver_answering_500_is_retried_until_it_takes_the_alert(receivers):
    receiver = receivers("fail", failures=2)
    delivery = one_delivery(receiver.url)

    send_alert.apply(args=[delivery.id])  # eager: Celery runs the retries at once

    assert len(receiver.requests) == 3
    assert len({r.body for r in receiver.requests}) == 1  # the same message each time
    assert all(r.signature_valid(SECRET) for r in receiver.requests)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("sent", 3, "")


def test_a_target_that_never_takes_it_is_marked_failed_after_the_last_attempt(receivers):
    receiver = receivers("fail", failures=1000)
    delivery = one_delivery(receiver.url)

    send_alert.apply(args=[delivery.id])

    assert len(receiver.requests) == send_alert.max_retries + 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.last_error) == ("failed", "HTTP 500")


def test_a_hanging_target_costs_its_timeout_and_another_target_still_gets_the_alert(receivers, settings):
    settings.ALERT_TIMEOUT_SECONDS = 0.5
    hanging, good = receivers("hang"), receivers()
    AlertTarget.objects.create(label="hangs", kind="webhook", url=hanging.url, secret=SECRET)
    AlertTarget.objects.create(label="good", kind="webhook", url=good.url, secret=SECRET)
    flip(endpoint(), "healthy", "unhealthy")
    services.process_alerts()

    by_label = {d.target_label: d for d in AlertDelivery.objects.all()}
    with pytest.raises(services.DeliveryFailed, match="timed out after 0.5 s"):
        services.deliver(by_label["hangs"].id)
    assert services.deliver(by_label["good"].id) == "sent"
    assert len(good.requests) == 1
    assert AlertDelivery.objects.get(id=by_label["hangs"].id).status == "pending"  # retried later


def test_an_apprise_json_url_reaches_a_local_receiver(receivers, settings):
    receiver = receivers()
    settings.ALERT_URLS = [receiver.url.replace("http://", "json://")]
    flip(endpoint(name="rack 3"), "healthy", "unhealthy", reason="HTTP 500")
    services.process_alerts()
    [delivery] = AlertDelivery.objects.all()
    assert delivery.target_label == "json://127.0.0.1/…"  # no path, user or token in the label

    assert services.deliver(delivery.id) == "sent"
    [got] = receiver.requests
    assert got.path == "/hook"
    assert got.json["title"] == 'Unhealthy: "rack 3" (127.0.0.5:11434)'
    assert got.json["message"] == '"rack 3" (127.0.0.5:11434) on 127.0.0.5 is unhealthy: HTTP 500.'


def test_an_apprise_url_whose_service_fails_is_retried(receivers, settings):
    receiver = receivers("fail", failures=1)
    settings.ALERT_URLS = [receiver.url.replace("http://", "form://")]
    flip(endpoint(), "healthy", "unhealthy")
    services.process_alerts()
    delivery = AlertDelivery.objects.get()

    send_alert.apply(args=[delivery.id])

    assert len(receiver.requests) == 2
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == ("sent", 2)


def test_a_signature_checks_body_secret_and_age():
    body, now = b'{"event":"down"}', time.time()
    ts = str(int(now))
    signature = notify.sign(SECRET, ts, body)
    assert notify.verify(SECRET, ts, body, signature, now=now)
    assert not notify.verify(SECRET, ts, body + b" ", signature, now=now)
    assert not notify.verify("wrong", ts, body, signature, now=now)
    assert not notify.verify(SECRET, str(int(now) - 1), body, signature, now=now)  # the timestamp is signed
    assert not notify.verify(SECRET, ts, body, signature, now=now + 301)  # replayed too late


def test_alert_urls_split_on_spaces_and_commas_but_keep_commas_inside_a_url(monkeypatch):
    monkeypatch.setenv("ALERT_URLS", "ntfy://alerts, mailto://u:p@mail.example?to=a@x.example,b@x.example json://h/p")
    assert env_url_list("ALERT_URLS") == [
        "ntfy://alerts",
        "mailto://u:p@mail.example?to=a@x.example,b@x.example",
        "json://h/p",
    ]
    monkeypatch.setenv("ALERT_URLS", "ntfy://alerts hooks.example")
    with pytest.raises(Exception, match="ALERT_URLS takes URLs"):
        env_url_list("ALERT_URLS")


def test_the_readme_verification_example_accepts_a_real_webhook_and_refuses_a_forged_one(receivers):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("refuse old timestamps (replays):\n\n```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(example, namespace)  # noqa: S102  (our own README)
    receiver = receivers()
    services.deliver(one_delivery(receiver.url).id)
    [got] = receiver.requests
    args = (got.headers["X-AgentCom-Timestamp"], got.headers["X-AgentCom-Signature"])
    assert namespace["verify"](SECRET.encode(), got.body, *args)
    assert not namespace["verify"](SECRET.encode(), got.body.replace(b"down", b"up!!"), *args)


def test_a_delivery_whose_task_was_lost_is_queued_again_by_the_sweep(receivers, monkeypatch):
    delivery = one_delivery(receivers().url)
    queued = []
    monkeypatch.setattr("registry.services.alerts._queue_delivery", queued.append)
    later = delivery.alert.at + timedelta(seconds=61)
    assert services.requeue_stalled_deliveries(now=delivery.alert.at + timedelta(seconds=30)) == 0
    assert services.requeue_stalled_deliveries(now=later) == 1 and queued == [delivery.id]
    services.deliver(delivery.id)
    assert services.requeue_stalled_deliveries(now=later) == 0  # sent: nothing to queue
