"""A worker killed in the middle of a probe run leaves its leases behind; they lapse and the next sweep probes."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from registry import services
from registry.models import Endpoint


def test_leases_of_a_killed_run_lapse_and_the_next_sweep_probes_those_endpoints(db, fake_fleet):
    host, port = fake_fleet.add(models=["llama3"])
    endpoint, _ = services.register_endpoint(host, port)
    now = timezone.now()
    # A run leased the endpoint, then its worker was killed: no release, no result.
    _, targets = services.claim_for_probe([endpoint.id], now=now)
    assert [t.id for t in targets] == [endpoint.id]
    # A tick while the lease holds skips it (no double probing) ...
    assert services.claim_for_probe([endpoint.id], now=now + timedelta(seconds=1))[1] == []
    # ... the first tick after the lease lapsed takes it, without anyone cleaning up.
    lease = timedelta(seconds=settings.PROBE_TIMEOUT_SECONDS * 2 + 5)
    claim, targets = services.claim_for_probe([endpoint.id], now=now + lease + timedelta(seconds=1))
    assert [t.id for t in targets] == [endpoint.id]
    services.release_claim(claim)
    assert services.probe([endpoint.id]) == [endpoint.id]
    assert Endpoint.objects.get(id=endpoint.id).status == "healthy"
