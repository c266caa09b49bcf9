"""End to end inside the hub: real probes of a fake Ollama record the status events, and those
events become the alert messages (the alert rules' own tests build the events by hand)."""

from __future__ import annotations

import pytest

from registry import services
from registry.models import AlertTarget, Event
from tests.alerts.helpers import SECRET, process_and_send

pytestmark = pytest.mark.django_db


def test_a_probed_endpoint_going_down_and_up_sends_one_message_each(receivers, fake_fleet):
    hook = receivers()
    AlertTarget.objects.create(label="ops hook", kind="webhook", url=hook.url, secret=SECRET)
    address, port = fake_fleet.add(models=["llama3"])
    endpoint, _ = services.register_endpoint(address, port, "rack 3")

    services.probe([endpoint.id])  # unknown -> healthy: recorded, not alerted
    process_and_send()
    assert hook.requests == []

    fake_fleet.set(address, port, mode="http500")
    services.probe([endpoint.id])  # one failure: a blip, no message
    process_and_send()
    assert hook.requests == []
    services.probe([endpoint.id])  # the second: unhealthy
    process_and_send()
    [down] = hook.requests
    assert down.signature_valid(SECRET)
    assert down.json["event"] == "down"
    assert down.json["endpoints"][0]["id"] == endpoint.id and down.json["endpoints"][0]["reason"] == "HTTP 500"
    assert "rack 3" in down.json["text"] and "HTTP 500" in down.json["text"]

    fake_fleet.set(address, port, mode="healthy")
    services.probe([endpoint.id])
    services.probe([endpoint.id])  # still healthy: nothing new
    process_and_send()
    assert [r.json["event"] for r in hook.requests] == ["down", "up"]
    statuses = Event.objects.filter(endpoint_id=endpoint.id, kind=Event.Kind.STATUS).order_by("at", "id")
    assert [(e.detail["from"], e.detail["to"]) for e in statuses] == [
        ("unknown", "healthy"),
        ("healthy", "unhealthy"),
        ("unhealthy", "healthy"),
    ]
