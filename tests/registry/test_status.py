"""The status rules, as pure functions of their inputs and of `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from registry.models import Endpoint
from registry.status import is_stale, next_status

HEALTHY, UNHEALTHY, UNKNOWN = Endpoint.Status.HEALTHY, Endpoint.Status.UNHEALTHY, Endpoint.Status.UNKNOWN

CURRENT_TIME = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_first_success_makes_an_unknown_endpoint_healthy():
    assert next_status(UNKNOWN, 0, ok=True, unhealthy_after=2) == (HEALTHY, 0)


@pytest.mark.parametrize("start", [UNKNOWN, HEALTHY])
def test_one_failure_keeps_the_previous_status_and_counts(start):
    assert next_status(start, 0, ok=False, unhealthy_after=2) == (start, 1)


def test_endpoint_turns_unhealthy_at_the_threshold_and_keeps_counting():
    assert next_status(HEALTHY, 1, ok=False, unhealthy_after=2) == (UNHEALTHY, 2)
    assert next_status(UNHEALTHY, 2, ok=False, unhealthy_after=2) == (UNHEALTHY, 3)


def test_a_threshold_of_one_fails_at_once():
    assert next_status(HEALTHY, 0, ok=False, unhealthy_after=1) == (UNHEALTHY, 1)


def test_first_success_after_failures_recovers_and_resets_the_count():
    assert next_status(UNHEALTHY, 7, ok=True, unhealthy_after=2) == (HEALTHY, 0)


def test_a_host_is_stale_only_after_the_window():
    assert not is_stale(CURRENT_TIME - timedelta(seconds=90), CURRENT_TIME, 90)
    assert is_stale(CURRENT_TIME - timedelta(seconds=91), CURRENT_TIME, 90)
    assert is_stale(None, CURRENT_TIME, 90)
