"""Uptime over 24 h and 7 d from status events, in the endpoint's row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from registry import services
from registry.models import Endpoint, Event
from registry.uptime import forget_cached_uptimes, uptime_percent

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
DAY = timedelta(hours=24)
WEEK = timedelta(days=7)
LONG_AGO = NOW - timedelta(days=60)


@pytest.fixture
def at_now(monkeypatch):
    """Rows read the clock through django.utils.timezone.now: stop it at NOW."""
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def test_six_hours_down_in_the_last_day_is_75_percent():
    transitions = [(NOW - hours(6), "healthy", "unhealthy")]
    assert uptime_percent(transitions, "unhealthy", LONG_AGO, NOW, DAY) == 75.0


def test_a_recovered_outage_counts_only_its_own_length():
    transitions = [(NOW - hours(10), "healthy", "unhealthy"), (NOW - hours(7), "unhealthy", "healthy")]
    assert uptime_percent(transitions, "healthy", LONG_AGO, NOW, DAY) == 87.5
    # Over 7 days the same 3 hours weigh less: 1 - 3/168.
    assert uptime_percent(transitions, "healthy", LONG_AGO, NOW, WEEK) == 98.2


def test_the_status_at_the_window_start_comes_from_the_event_before_it():
    transitions = [(NOW - hours(30), "healthy", "unhealthy"), (NOW - hours(12), "unhealthy", "healthy")]
    assert uptime_percent(transitions, "healthy", LONG_AGO, NOW, DAY) == 50.0


def test_time_unknown_and_before_registration_count_for_neither_side():
    registered = NOW - hours(8)
    transitions = [(NOW - hours(6), "unknown", "healthy"), (NOW - hours(2), "healthy", "unhealthy")]
    # Known for 6 h (2 h unknown after registering, 16 h not registered): 4 healthy of 6.
    assert uptime_percent(transitions, "unhealthy", registered, NOW, DAY) == 66.7


def test_an_endpoint_never_probed_has_no_uptime():
    assert uptime_percent([], "unknown", NOW - hours(3), NOW, DAY) is None
    assert uptime_percent([], "unknown", NOW, NOW, DAY) is None


def test_without_events_the_current_status_held_the_whole_window():
    assert uptime_percent([], "healthy", LONG_AGO, NOW, WEEK) == 100.0
    assert uptime_percent([], "unhealthy", LONG_AGO, NOW, WEEK) == 0.0


def status_event(endpoint: Endpoint, at: datetime, old: str, new: str) -> Event:
    return Event.objects.create(
        kind="status", at=at, endpoint_id=endpoint.id, detail={"from": old, "to": new, "reason": ""}
    )


def test_the_row_carries_uptime_24h_and_7d_from_the_recorded_events(db, at_now):
    endpoint, _ = services.register_endpoint("127.0.0.1", 11434)
    Endpoint.objects.filter(id=endpoint.id).update(registered_at=NOW - timedelta(days=10), status="unhealthy")
    status_event(endpoint, NOW - timedelta(days=8), "unknown", "healthy")
    status_event(endpoint, NOW - timedelta(days=2), "healthy", "unhealthy")
    status_event(endpoint, NOW - hours(18), "unhealthy", "healthy")
    status_event(endpoint, NOW - hours(6), "healthy", "unhealthy")
    (row,) = services.endpoint_rows([endpoint.id])
    assert row["uptime_24h"] == 50.0  # down 6 h, up 12 h, down 6 h
    # 7 days: up 5 d, down 1 d 6 h, up 12 h, down 6 h -> 5.5 d of 7.
    assert row["uptime_7d"] == 78.6


def test_uptime_is_cached_but_follows_a_status_change_at_once(db, at_now):
    endpoint, _ = services.register_endpoint("127.0.0.1", 11434)
    Endpoint.objects.filter(id=endpoint.id).update(registered_at=NOW - DAY, status="healthy")
    status_event(endpoint, NOW - DAY, "unknown", "healthy")
    assert services.endpoint_rows([endpoint.id])[0]["uptime_24h"] == 100.0
    status_event(endpoint, NOW - hours(12), "healthy", "unhealthy")
    # Same status: the cached figure stands (uptime moves slowly; rows are rebuilt often).
    assert services.endpoint_rows([endpoint.id])[0]["uptime_24h"] == 100.0
    Endpoint.objects.filter(id=endpoint.id).update(status="unhealthy")
    assert services.endpoint_rows([endpoint.id])[0]["uptime_24h"] == 50.0


def test_a_snapshot_computes_every_uptime_in_one_query(db, at_now, django_assert_max_num_queries):
    endpoints = [services.register_endpoint(f"127.0.0.{i}", 11434)[0] for i in range(1, 30)]
    Endpoint.objects.update(registered_at=NOW - DAY, status="healthy")
    for endpoint in endpoints[:10]:
        status_event(endpoint, NOW - hours(3), "unhealthy", "healthy")
    forget_cached_uptimes()
    with django_assert_max_num_queries(5):
        snapshot = services.build_snapshot()
    figures = {row["id"]: row["uptime_24h"] for row in snapshot["endpoints"]}
    assert [figures[e.id] for e in endpoints[:10]] == [12.5] * 10
    assert [figures[e.id] for e in endpoints[10:]] == [100.0] * 19
