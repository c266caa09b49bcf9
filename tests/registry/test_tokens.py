"""Tokens: the raw value is printed once and is the only thing that authenticates; what the
database holds is useless to whoever reads it; a revoked token stops at once; use is recorded."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.forms.models import model_to_dict
from django.utils import timezone

from registry import services
from registry.models import ResourceSnapshot, Token

REPORT = {"hostname": "gpu-01", "cpu_percent": 1, "ram_used_bytes": 1, "ram_total_bytes": 2}


def create_token(scope: str, label: str) -> str:
    out = io.StringIO()
    call_command("create_token", "--scope", scope, "--label", label, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


def report(api, token: str):
    return api.post("/api/v1/sidecar/report", REPORT, token)


def test_the_printed_token_works_and_nothing_stored_can_stand_in_for_it(api):
    raw = create_token("sidecar", "gpu-01")
    token = Token.objects.get()
    assert (token.scope, token.label) == ("sidecar", "gpu-01")
    assert raw.startswith(token.prefix)  # enough to recognise it in the admin list
    # Someone who reads the table (or a backup of it) holds no working token.
    stored = {name: str(value) for name, value in model_to_dict(token, exclude=["id"]).items()}
    assert not [name for name, value in stored.items() if raw in value]
    for stolen in (token.token_hash, token.prefix, raw[:-1], raw + "x", raw.upper()):
        response = report(api, stolen)
        assert response.status_code == 401, stolen
        assert "wrong or revoked" in response.json()["detail"]
    assert not ResourceSnapshot.objects.exists()
    assert report(api, raw).status_code == 200
    assert ResourceSnapshot.objects.count() == 1


def test_every_token_is_different_and_authenticates_as_itself(db):
    first, second = create_token("sidecar", "a"), create_token("sidecar", "a")
    assert first != second
    assert services.authenticate_token(first).id != services.authenticate_token(second).id
    assert {services.authenticate_token(raw).label for raw in (first, second)} == {"a"}


def test_a_revoked_token_is_refused_at_once_and_the_others_keep_working(api):
    revoked, kept = create_token("sidecar", "old"), create_token("sidecar", "new")
    assert report(api, revoked).status_code == 200
    assert services.revoke_tokens([Token.objects.get(label="old").id]) == 1
    response = report(api, revoked)
    assert response.status_code == 401 and "wrong or revoked" in response.json()["detail"]
    assert report(api, kept).status_code == 200
    assert ResourceSnapshot.objects.count() == 2  # the refused report wrote nothing
    assert services.revoke_tokens([Token.objects.get(label="old").id]) == 0  # revoking twice changes nothing


def test_use_is_recorded_once_and_not_rewritten_on_every_request(api):
    raw = create_token("sidecar", "gpu-01")
    assert Token.objects.get().last_used_at is None
    assert report(api, raw).status_code == 200
    first_use = Token.objects.get().last_used_at
    assert first_use is not None and timezone.now() - first_use < timedelta(minutes=1)
    # A busy sidecar must not write the token row per report: the next use within the minute
    # leaves it as it was, whatever time that request carries.
    assert services.authenticate_token(raw, now=first_use + timedelta(seconds=30)) is not None
    assert Token.objects.get().last_used_at == first_use


def test_a_batch_of_reports_records_the_use_of_every_token_in_it(db, django_assert_num_queries):
    for name in ("gpu-01", "gpu-02", "gpu-03"):
        create_token("sidecar", name)
    ids = list(Token.objects.values_list("id", flat=True))
    batch = [services.parse_report({**REPORT, "hostname": f"gpu-0{i}"}) for i in (1, 2, 3)]
    services.record_reports(batch, token_ids=ids)
    assert Token.objects.filter(last_used_at__isnull=True).count() == 0
    # Within the minute the same tokens are not written again; once due, all in one statement.
    with django_assert_num_queries(0):
        services.note_tokens_used(ids)
    services.forget_cached_tokens()
    with django_assert_num_queries(1):
        services.note_tokens_used(ids)


def test_a_sidecar_token_may_report_but_not_manage_endpoints(api):
    raw = create_token("sidecar", "gpu-01")
    response = api.post("/api/v1/endpoints", {"host": "gpu-09"}, raw)
    assert response.status_code == 403
    assert "sidecar token may not use this route" in response.json()["detail"]
    assert api.get("/api/v1/endpoints", raw).status_code == 403


def test_an_admin_token_may_manage_endpoints(api):
    raw = create_token("admin", "ops")
    assert api.post("/api/v1/endpoints", {"host": "gpu-09"}, raw).status_code == 201
    assert [row["address"] for row in api.get("/api/v1/endpoints", raw).json()] == ["gpu-09"]


def test_create_token_refuses_an_unknown_scope(db):
    with pytest.raises(CommandError):
        call_command("create_token", "--scope", "root", "--label", "x")
    assert not Token.objects.exists()
