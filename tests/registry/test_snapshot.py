"""The snapshot is built with a fixed number of queries, whatever the fleet size."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from registry import services
from registry.models import Endpoint, EndpointModel, Host, ResourceSnapshot
from registry.schemas import SidecarReport


def make_fleet(n: int) -> None:
    hosts = Host.objects.bulk_create([Host(name=f"gpu-{i:04d}") for i in range(n)])
    endpoints = Endpoint.objects.bulk_create([Endpoint(host=h, address=h.name, port=11434) for h in hosts])
    EndpointModel.objects.bulk_create(
        [EndpointModel(endpoint=e, name=name) for e in endpoints for name in ("llama3", f"m{e.id % 3}")]
    )
    Host.objects.filter(id__in=[h.id for h in hosts]).update(
        last_report_at=timezone.now(), cpu_percent=5, ram_used_bytes=1, ram_total_bytes=2
    )


def queries_for_snapshot() -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as ctx:
        snapshot = services.build_snapshot()
    return len(ctx.captured_queries), snapshot


def test_snapshot_query_count_is_the_same_for_5_and_200_endpoints(db):
    make_fleet(5)
    small, snap5 = queries_for_snapshot()
    make_fleet_more = 195
    hosts = Host.objects.bulk_create([Host(name=f"more-{i:04d}") for i in range(make_fleet_more)])
    Endpoint.objects.bulk_create([Endpoint(host=h, address=h.name, port=11434) for h in hosts])
    large, snap200 = queries_for_snapshot()
    assert len(snap5["endpoints"]) == 5 and len(snap200["endpoints"]) == 200
    assert small == large <= 4


def test_fleet_summary_counts_distinct_hosts_per_model(db):
    make_fleet(3)
    host = Host.objects.first()
    Endpoint.objects.create(host=host, address=host.name, port=11500).models.create(
        name="llama3"
    )  # same host, second port
    fleet = services.build_snapshot()["fleet_models"]
    assert fleet["llama3"] == 3
    assert list(fleet)[0] == "llama3"  # most widespread first


def test_a_silent_host_shows_as_stale(db, settings):
    report = SidecarReport(hostname="gpu-01", cpu_percent=10, ram_used_bytes=1, ram_total_bytes=2)
    services.record_report(report, now=timezone.now() - timedelta(seconds=settings.STALE_AFTER_SECONDS + 5))
    assert services.build_snapshot()["resources"]["gpu-01"]["stale"] is True
    services.record_report(report)
    assert services.build_snapshot()["resources"]["gpu-01"]["stale"] is False


def test_retention_prunes_old_history_but_each_host_keeps_its_latest_values(db, settings):
    report = SidecarReport(hostname="gpu-01", cpu_percent=10, ram_used_bytes=1, ram_total_bytes=2)
    old = timezone.now() - timedelta(hours=settings.RESOURCE_RETENTION_HOURS + 1)
    services.record_report(report, now=old)
    services.record_report(report, now=old + timedelta(seconds=settings.RESOURCE_HISTORY_SECONDS))
    services.record_report(report)
    assert ResourceSnapshot.objects.count() == 3
    assert services.prune_snapshots() == 2
    assert ResourceSnapshot.objects.count() == 1
    assert services.build_snapshot()["resources"]["gpu-01"]["cpu_percent"] == 10
