"""With the real Celery worker and Redis: a transition reaches a webhook within 5 s, once; a hanging
target does not hold up another; a failing one is retried by the worker until it takes the alert."""

from __future__ import annotations

import pytest

from registry.models import AlertDelivery, AlertTarget
from tests.alerts.helpers import SECRET, endpoint, flip
from tests.live import LiveStack, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.live]

ARRIVAL_SECONDS = 5  # the promise: a webhook within 5 s of the transition


@pytest.fixture
def worker(tmp_path):
    # No beat: every alert the receivers see was queued by the transition itself, with the
    # default grouping window (ALERT_GROUP_SECONDS, 3 s).
    stack = LiveStack(
        tmp_path, probe_interval=60.0, components=("worker",), embedded_beat=False,
        ALERT_TIMEOUT_SECONDS="20",
    )  # fmt: skip
    stack.start()
    yield stack
    stack.stop()


def hook(receiver, label: str = "hook") -> AlertTarget:
    return AlertTarget.objects.create(label=label, kind="webhook", url=receiver.url, secret=SECRET)


def test_a_transition_reaches_the_webhook_within_5_s_signed_and_exactly_once(worker, receivers):
    receiver = receivers()
    hook(receiver)
    e = endpoint(name="rack 3")

    flip(e, "healthy", "unhealthy", reason="connection refused")
    got = receiver.wait_for(1, timeout=ARRIVAL_SECONDS)
    assert len(got) == 1, worker.log("worker")
    assert got[0].signature_valid(SECRET)
    assert got[0].json["event"] == "down" and got[0].json["endpoints"][0]["id"] == e.id

    # The recovery comes next, and nothing else in between: the first transition was sent once.
    flip(e, "unhealthy", "healthy")
    got = receiver.wait_for(2, timeout=ARRIVAL_SECONDS)
    assert [r.json["event"] for r in got] == ["down", "up"], worker.log("worker")
    assert got[1].signature_valid(SECRET)
    assert wait_until(lambda: AlertDelivery.objects.filter(status="sent").count() == 2, timeout=5)
    assert len(receiver.requests) == 2


def test_a_hanging_target_does_not_hold_up_another(worker, receivers):
    hanging, good = receivers("hang"), receivers()
    hook(hanging, "hangs")
    hook(good, "good")

    flip(endpoint(), "healthy", "unhealthy")
    assert len(good.wait_for(1, timeout=ARRIVAL_SECONDS)) == 1, worker.log("worker")
    # The other target has the alert too and is still holding its request open (20 s timeout).
    assert len(hanging.wait_for(1, timeout=ARRIVAL_SECONDS)) == 1
    assert hanging.answered == 0


def test_a_failing_target_is_retried_by_the_worker_until_it_takes_the_alert(worker, receivers):
    receiver = receivers("fail", failures=2)
    hook(receiver)

    flip(endpoint(), "healthy", "unhealthy")
    # Backoff 2 s then 4 s at most (with jitter): three tries well within 20 s.
    assert len(receiver.wait_for(3, timeout=20)) == 3, worker.log("worker")
    assert wait_until(lambda: AlertDelivery.objects.filter(status="sent").exists(), timeout=5)
    delivery = AlertDelivery.objects.get()
    assert (delivery.status, delivery.attempts) == ("sent", 3)
    assert len({r.body for r in receiver.requests}) == 1
