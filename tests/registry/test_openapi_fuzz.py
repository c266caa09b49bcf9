"""Schemathesis against the real app (Django's WSGI handler, every middleware, the test database).

Every operation gets generated valid and invalid requests, with an admin token; each answer must
be no 5xx, a status, headers and body the OpenAPI description lists, invalid input refused, and
valid input accepted. "Valid" means what the description can say: a well-formed registration
may still be refused for reasons no schema can hold (REGISTRY_ALLOWED_NETWORKS, the same
endpoint twice in one list), and those refusals carry their own error codes.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES_PER_OPERATION = 60
REPORT = "/api/v1/sidecar/report"
# 400s a well-formed request may get: decided by the hub's configuration or the rest of the body
# (inconsistent_report: a report's used over total, VRAM half given, or a `hostname` that cannot
# name the machine when neither `host` nor `ollama_url` does; rules between fields). History:
# too_many_points (a window over `step` gives more points than a curve holds: two fields) and
# invalid_since (a date the calendar lacks, 2026-02-30, that a pattern cannot refuse).
NOT_IN_ANY_SCHEMA = {"address_not_allowed", "duplicate", "inconsistent_report", "too_many_points", "invalid_since"}

# Read from the app itself at collection (the description needs no database).
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", WSGIHandler())
hypothesis_settings = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,  # the same requests every run: a failure here is reproducible, not flaky
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(autouse=True)
def _keep_the_test_transaction(db):
    """The WSGI handler closes "old" connections around each request, which would end the test's
    transaction (Django's own test client unhooks these signals the same way)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


def valid_data_is_accepted(ctx, response, case) -> None:
    """Like schemathesis' positive_data_acceptance, except for the refusals no schema can express."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    if response.json().get("error") in NOT_IN_ANY_SCHEMA:
        return None
    raise AssertionError(f"a request the OpenAPI description allows was refused: {response.content!r}")


def call_and_validate(case, token: str) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"},
        excluded_checks=[positive_data_acceptance],
        additional_checks=[valid_data_is_accepted],
    )


@schema.exclude(path=REPORT).parametrize()
@hypothesis_settings
def test_every_answer_matches_the_openapi_description(case, admin_token):
    call_and_validate(case, admin_token)


@schema.include(path=REPORT).parametrize()
@hypothesis_settings
def test_the_report_route_matches_the_openapi_description(case, admin_token):
    call_and_validate(case, admin_token)
