"""create_token: the token is the last line printed, only its hash is stored, revocable."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from registry.models import Token


def test_create_token_prints_the_token_last_and_stores_only_a_hash(api):
    out = io.StringIO()
    call_command("create_token", "--scope", "sidecar", "--label", "gpu-01", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    token = Token.objects.get()
    assert token.scope == "sidecar" and token.label == "gpu-01"
    assert raw not in (token.token_hash, token.prefix)
    assert token.token_hash == Token.hash(raw)
    report = {"hostname": "h", "cpu_percent": 1, "ram_used_bytes": 1, "ram_total_bytes": 2}
    assert api.post("/api/v1/sidecar/report", report, raw).status_code == 200


def test_create_token_refuses_an_unknown_scope():
    with pytest.raises(CommandError):
        call_command("create_token", "--scope", "root", "--label", "x")


def test_admin_token_may_manage_endpoints(api):
    out = io.StringIO()
    call_command("create_token", "--scope", "admin", "--label", "ops", stdout=out)
    raw = out.getvalue().strip().splitlines()[-1]
    assert api.post("/api/v1/endpoints", {"host": "gpu-09"}, raw).status_code == 201
