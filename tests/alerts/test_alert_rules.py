"""Which transitions become messages: one per transition, grouped per host, flapping reported once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from registry import services
from registry.models import Alert, AlertDelivery, AlertPending, AlertTarget
from registry.tasks import alert_sweep
from tests.alerts.helpers import SECRET, endpoint, flip, label, process_and_send

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook(receivers, db):
    receiver = receivers()
    AlertTarget.objects.create(label="ops hook", kind="webhook", url=receiver.url, secret=SECRET)
    return receiver


def texts(receiver) -> list[str]:
    return [r.json["text"] for r in receiver.requests]


def test_an_endpoint_turning_unhealthy_sends_one_signed_webhook(hook):
    e = endpoint(name="rack 3")
    flip(e, "healthy", "unhealthy", reason="connection refused")
    process_and_send()

    [got] = hook.requests
    assert got.signature_valid(SECRET)
    assert not got.signature_valid("another secret")
    body = got.json
    assert body["event"] == "down"
    assert body["text"] == '"rack 3" (127.0.0.5:11434) on 127.0.0.5 is unhealthy: connection refused.'
    assert body["endpoints"] == [
        {"id": e.id, "label": label(e), "host": "127.0.0.5", "status": "unhealthy", "reason": "connection refused"}
    ]
    assert body["at"]

    # Processing and sending again (a repeated task, a redelivered message) sends nothing more.
    process_and_send()
    delivery = AlertDelivery.objects.get()
    assert services.deliver(delivery.id) == "skipped"
    assert len(hook.requests) == 1
    assert delivery.status == "sent" and delivery.attempts == 1


def test_a_recovery_says_how_long_the_endpoint_was_down(hook):
    e = endpoint()
    start = timezone.now() - timedelta(minutes=20)
    flip(e, "healthy", "unhealthy", at=start, reason="HTTP 500")
    process_and_send()
    flip(e, "unhealthy", "healthy", at=start + timedelta(minutes=12, seconds=5))
    process_and_send()

    assert texts(hook) == [
        "127.0.0.5:11434 on 127.0.0.5 is unhealthy: HTTP 500.",
        "127.0.0.5:11434 on 127.0.0.5 is healthy again after 12 min down.",
    ]
    assert hook.requests[1].json["event"] == "up"
    assert hook.requests[1].json["endpoints"][0]["down_seconds"] == 725


def test_the_first_probe_and_other_events_are_not_alerts(hook):
    e = endpoint()
    flip(e, "unknown", "healthy")
    assert not AlertPending.objects.exists()
    process_and_send()
    assert hook.requests == []
    # An endpoint that never answered is reported once it is judged unhealthy.
    flip(endpoint(port=11435), "unknown", "unhealthy", reason="connection refused")
    process_and_send()
    assert texts(hook) == ["127.0.0.5:11435 on 127.0.0.5 is unhealthy: connection refused."]


def test_a_whole_host_going_down_is_one_message_naming_its_endpoints(hook):
    on_host = [endpoint("127.0.0.5", port) for port in (11434, 11435, 11436)]
    elsewhere = endpoint("127.0.0.6")
    for e in on_host:
        flip(e, "healthy", "unhealthy", reason="connection refused")
    flip(elsewhere, "healthy", "unhealthy", reason="timed out after 5 s")
    process_and_send()

    by_title = {r.json["title"]: r.json for r in hook.requests}
    assert sorted(by_title) == ["Host 127.0.0.5 is down", "Unhealthy: 127.0.0.6:11434"]
    down = by_title["Host 127.0.0.5 is down"]
    assert down["text"] == (
        "All 3 endpoints on 127.0.0.5 are unhealthy: 127.0.0.5:11434 (connection refused), "
        "127.0.0.5:11435 (connection refused), 127.0.0.5:11436 (connection refused)."
    )
    assert [x["id"] for x in down["endpoints"]] == [e.id for e in on_host]

    for e in on_host:
        flip(e, "unhealthy", "healthy")
    process_and_send()
    assert hook.requests[-1].json["title"] == "Host 127.0.0.5 is back"
    assert len(hook.requests) == 3


def test_part_of_a_host_going_down_is_one_message_for_those_endpoints(hook):
    a, b, _ = (endpoint("127.0.0.5", port) for port in (11434, 11435, 11436))
    flip(a, "healthy", "unhealthy", reason="HTTP 500")
    flip(b, "healthy", "unhealthy", reason="HTTP 500")
    process_and_send()
    [got] = hook.requests
    assert got.json["title"] == "2 endpoints unhealthy on 127.0.0.5"


def test_a_flapping_endpoint_is_reported_once_then_once_when_stable_again(hook, settings):
    settings.ALERT_FLAP_TRANSITIONS = 4
    settings.ALERT_FLAP_WINDOW_SECONDS = 600
    e = endpoint()
    t = timezone.now() - timedelta(minutes=30)
    states = ["healthy", "unhealthy"] * 5
    for i, (before, after) in enumerate(zip(states, states[1:], strict=False)):  # 9 flips, a minute apart
        flip(e, before, after, at=t + timedelta(minutes=i), reason="HTTP 500" if after == "unhealthy" else "")
        process_and_send(now=t + timedelta(minutes=i, seconds=10))

    kinds = [r.json["event"] for r in hook.requests]
    assert kinds == ["down", "up", "down", "flapping"]  # the 4th change within 10 min: flapping, then quiet
    assert hook.requests[3].json["text"] == (
        "127.0.0.5:11434 on 127.0.0.5 keeps changing status (127.0.0.5:11434: 4 changes in 10 min). "
        "Further changes are not reported until it has been stable for 10 min."
    )

    # Still within 10 min of the last change: quiet. After that: one "stable again".
    last_flip = t + timedelta(minutes=8)
    process_and_send(now=last_flip + timedelta(minutes=9))
    assert len(hook.requests) == 4
    e.status = "unhealthy"
    e.save(update_fields=["status"])
    process_and_send(now=last_flip + timedelta(minutes=10, seconds=1))
    process_and_send(now=last_flip + timedelta(minutes=11))
    assert [r.json["event"] for r in hook.requests] == ["down", "up", "down", "flapping", "stable"]
    assert hook.requests[4].json["text"] == (
        "127.0.0.5:11434 on 127.0.0.5 stopped flapping (no change for 10 min): 127.0.0.5:11434 is unhealthy."
    )

    # Stable again: the next change is reported as usual, with its downtime.
    flip(e, "unhealthy", "healthy", at=last_flip + timedelta(minutes=15))
    process_and_send(now=last_flip + timedelta(minutes=15, seconds=10))
    assert hook.requests[5].json["text"] == "127.0.0.5:11434 on 127.0.0.5 is healthy again after 15 min down."


def test_nothing_is_kept_when_no_target_is_configured(db):
    flip(endpoint(), "healthy", "unhealthy")
    assert not AlertPending.objects.exists()
    assert services.process_alerts() == []
    assert not Alert.objects.exists()


def test_a_disabled_target_gets_nothing_but_another_does(receivers, hook):
    off = receivers()
    AlertTarget.objects.create(label="off", kind="webhook", url=off.url, secret=SECRET, enabled=False)
    flip(endpoint(), "healthy", "unhealthy")
    process_and_send()
    assert len(hook.requests) == 1 and off.requests == []


def test_the_periodic_sweep_leaves_a_group_still_forming_to_its_own_task(hook, settings):
    settings.ALERT_GROUP_SECONDS = 3
    now = timezone.now()
    flip(endpoint(port=11434), "healthy", "unhealthy", at=now - timedelta(seconds=60))  # its task was lost
    flip(endpoint(port=11435), "healthy", "unhealthy", at=now - timedelta(seconds=1))  # still grouping
    services.process_alerts(now=now, older_than_seconds=settings.ALERT_GROUP_SECONDS)
    assert [a.endpoints[0]["label"] for a in Alert.objects.all()] == ["127.0.0.5:11434"]
    assert AlertPending.objects.count() == 1
    services.process_alerts(now=now + timedelta(seconds=3))
    assert Alert.objects.count() == 2 and not AlertPending.objects.exists()


def test_alerts_older_than_the_retention_are_pruned_with_their_deliveries(hook, settings):
    settings.ALERT_RETENTION_DAYS = 30
    flip(endpoint(), "healthy", "unhealthy")
    process_and_send()
    assert services.prune_alerts(now=timezone.now() + timedelta(days=29)) == 0
    assert services.prune_alerts(now=timezone.now() + timedelta(days=31)) == 1
    assert not Alert.objects.exists() and not AlertDelivery.objects.exists()


def test_the_periodic_sweep_says_stable_again_once_a_flapping_endpoint_has_been_quiet(hook, settings):
    settings.ALERT_FLAP_TRANSITIONS, settings.ALERT_FLAP_WINDOW_SECONDS = 2, 600
    e = endpoint()
    t = timezone.now() - timedelta(minutes=11)
    flip(e, "healthy", "unhealthy", at=t)
    flip(e, "unhealthy", "healthy", at=t + timedelta(seconds=30))
    process_and_send(now=t + timedelta(seconds=40))
    assert [r.json["event"] for r in hook.requests] == ["flapping"]

    alert_sweep()  # what beat runs every minute
    process_and_send()
    assert [r.json["event"] for r in hook.requests] == ["flapping", "stable"]
    alert_sweep()
    process_and_send()
    assert len(hook.requests) == 2
