"""GET /api/v1/events: filters, paging newest first, who may read, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client

from registry import services
from registry.models import Event
from registry.wire import EventPage

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
URL = "/api/v1/events"


@pytest.fixture
def history(db) -> dict:
    """Two endpoints on two machines with a few events each, one minute apart (newest: host_back)."""
    a, _ = services.register_endpoint("127.0.0.1", 11434, "a")
    b, _ = services.register_endpoint("127.0.0.2", 11434)
    Event.objects.all().delete()
    made = [
        ("registered", a, {"by": "user alice"}),
        ("status", a, {"from": "unknown", "to": "healthy", "reason": ""}),
        ("model_added", a, {"model": "llama3"}),
        ("registered", b, {"by": "admin token 'ci'"}),
        ("status", b, {"from": "unknown", "to": "unhealthy", "reason": "connection refused"}),
        ("host_silent", None, {"last_report_at": NOW.isoformat(), "silent_for": 95}),
        ("host_back", None, {"last_report_at": NOW.isoformat(), "silent_for": 300}),
    ]
    for minute, (kind, endpoint, detail) in enumerate(made):
        Event.objects.create(
            at=NOW + timedelta(minutes=minute),
            kind=kind,
            endpoint_id=endpoint.id if endpoint else None,
            endpoint_label=services.endpoint_label(endpoint.name, endpoint.address, endpoint.port) if endpoint else "",
            host=endpoint.host.name if endpoint else "127.0.0.1",
            detail=detail,
        )
    return {"a": a, "b": b}


def page(api, token, query: str = "") -> dict:
    reply = api.get(f"{URL}{query}", token)
    assert reply.status_code == 200, reply.content
    return EventPage.model_validate(reply.json()).model_dump(mode="json")


def test_all_events_newest_first(api, admin_token, history):
    events = page(api, admin_token)["events"]
    assert [e["kind"] for e in events] == [
        "host_back",
        "host_silent",
        "status",
        "registered",
        "model_added",
        "status",
        "registered",
    ]
    assert events[2]["detail"] == {"from": "unknown", "to": "unhealthy", "reason": "connection refused"}
    assert events[2]["endpoint_label"] == "127.0.0.2:11434"


def test_filters_by_endpoint_host_kind_and_since(api, admin_token, history):
    a = history["a"]
    assert [e["kind"] for e in page(api, admin_token, f"?endpoint={a.id}")["events"]] == [
        "model_added",
        "status",
        "registered",
    ]
    with_machine = page(api, admin_token, f"?endpoint={a.id}&with_host=true")["events"]
    assert [e["kind"] for e in with_machine][:2] == ["host_back", "host_silent"] and len(with_machine) == 5
    assert {e["host"] for e in page(api, admin_token, "?host=127.0.0.2")["events"]} == {"127.0.0.2"}
    statuses = page(api, admin_token, "?kind=status")["events"]
    assert [e["endpoint_id"] for e in statuses] == [history["b"].id, a.id]
    since = (NOW + timedelta(minutes=4)).isoformat().replace("+00:00", "Z")
    assert [e["kind"] for e in page(api, admin_token, f"?since={since}")["events"]] == [
        "host_back",
        "host_silent",
        "status",
    ]
    assert page(api, admin_token, "?kind=status&host=127.0.0.1&since=2026-11-27T12:00:30")["events"][0]["detail"][
        "to"
    ] == ("healthy")


def test_pages_follow_the_cursor_to_the_oldest_event_without_repeats(api, admin_token, history):
    # Two events at the same instant: the cursor tells them apart by id.
    Event.objects.create(at=NOW + timedelta(minutes=6), kind="host_back", host="127.0.0.9", detail={})
    seen, cursor = [], ""
    while True:
        got = page(api, admin_token, f"?limit=3{'&cursor=' + cursor if cursor else ''}")
        seen += got["events"]
        if got["next"] is None:
            break
        cursor = got["next"]
    assert len(seen) == 8 and len({e["id"] for e in seen}) == 8
    assert [e["at"] for e in seen] == sorted((e["at"] for e in seen), reverse=True)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?kind=exploded", "kind"),
        ("?since=yesterday", "since"),
        ("?endpoint=abc", "endpoint"),
        ("?limit=501", "limit"),
        ("?limit=0", "limit"),
        ("?cursor=xyz", "cursor"),
    ],
)
def test_bad_filters_are_a_400_naming_the_field(api, admin_token, history, query, field):
    reply = api.get(f"{URL}{query}", admin_token)
    assert reply.status_code == 400 and reply["Content-Type"].startswith("application/json")
    assert reply.json()["error"] == "invalid_input" and field in reply.json()["detail"]


def test_a_logged_in_viewer_may_read_and_an_anonymous_visitor_may_not(viewer, history):
    client = Client()
    assert client.get(URL).status_code == 401
    client.force_login(viewer)
    assert len(client.get(URL).json()["events"]) == 7


def test_a_sidecar_token_may_not_read_events(api, sidecar_token, history):
    assert api.get(URL, sidecar_token).status_code == 403
