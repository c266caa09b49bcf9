"""The snapshot is built with a fixed number of queries, whatever the fleet size."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from registry import services
from registry.models import Endpoint, EndpointModel, Host, ResourceSnapshot
from registry.schemas import SidecarReport

GPUS = [{"index": 0, "name": "A100", "memory_used_bytes": 1, "memory_total_bytes": 2}]


def make_fleet(n: int, prefix: str = "gpu", ports: tuple[int, ...] = (11434,)) -> None:
    """n machines that have reported (with a GPU), each with a healthy endpoint per port holding
    two models, llama3 loaded on the first endpoint only."""
    hosts = Host.objects.bulk_create(
        [
            Host(
                name=f"{prefix}-{i:04d}",
                hostname=f"{prefix}-{i:04d}.lan",
                last_report_at=timezone.now(),
                cpu_percent=5,
                ram_used_bytes=1,
                ram_total_bytes=2,
                vram_used_bytes=1,
                vram_total_bytes=2,
                gpus=GPUS,
            )
            for i in range(n)
        ]
    )
    endpoints = Endpoint.objects.bulk_create(
        [Endpoint(host=h, address=h.name, port=port, status=Endpoint.Status.HEALTHY) for h in hosts for port in ports]
    )
    EndpointModel.objects.bulk_create(
        [
            EndpointModel(endpoint=e, name=name, loaded=name == "llama3" and i == 0)
            for i, e in enumerate(endpoints)
            for name in ("llama3", f"m{e.id % 3}")
        ]
    )


def queries_for_snapshot() -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as ctx:
        snapshot = services.build_snapshot()
    return len(ctx.captured_queries), snapshot


def test_snapshot_query_count_stays_fixed_as_the_fleet_grows(db):
    counts = []
    for added, prefix in ((5, "a"), (45, "b"), (150, "c")):
        make_fleet(added, prefix, ports=(11434, 11435))
        count, snapshot = queries_for_snapshot()
        counts.append(count)
        hosts = Host.objects.count()
        # Everything a dashboard shows was read by those queries: models, resources, GPUs, fleet.
        assert len(snapshot["endpoints"]) == 2 * hosts
        assert all(len(row["models"]) == 2 for row in snapshot["endpoints"])
        assert all(row["host"] == row["address"] for row in snapshot["endpoints"])
        assert len(snapshot["resources"]) == hosts
        assert all(r["cpu_percent"] == 5 and r["gpus"] == GPUS for r in snapshot["resources"].values())
        assert snapshot["fleet_models"]["llama3"] == hosts
    assert counts[0] == counts[1] == counts[2] <= 5, counts
    # Built again with nothing changed, the model lists and uptimes come from memory: two fewer.
    again, _ = queries_for_snapshot()
    assert again == counts[-1] - 2


def test_fleet_summary_counts_distinct_reachable_hosts_per_model_and_where_it_is_loaded(db):
    make_fleet(3)
    host = Host.objects.first()
    Endpoint.objects.create(host=host, address=host.name, port=11500, status="healthy").models.create(
        name="llama3", loaded=True
    )  # same host, second port
    down = Endpoint.objects.create(host=Host.objects.create(name="down"), address="down", status="unhealthy")
    down.models.create(name="llama3", loaded=True)  # last known: a host that is down serves nothing
    snapshot = services.build_snapshot()
    assert snapshot["fleet_models"]["llama3"] == 3
    assert list(snapshot["fleet_models"])[0] == "llama3"  # most widespread first
    assert snapshot["fleet_loaded"] == {"llama3": 1}


def test_a_model_change_shows_in_the_next_snapshot(db, fake_fleet):
    address, port = fake_fleet.add(models=["llama3:8b"])
    endpoint, _ = services.register_endpoint(address, port)
    services.probe([endpoint.id])
    assert [m["name"] for m in services.build_snapshot()["endpoints"][0]["models"]] == ["llama3:8b"]
    fake_fleet.set(address, port, models=["llama3:8b", "qwen2:7b"])
    services.probe([endpoint.id])
    assert [m["name"] for m in services.build_snapshot()["endpoints"][0]["models"]] == ["llama3:8b", "qwen2:7b"]


def test_a_snapshot_can_be_filtered_and_paged(db):
    make_fleet(6)
    Endpoint.objects.filter(address="gpu-0004").update(status="unhealthy", name="rack 4")
    query = services.EndpointQuery
    only = services.build_snapshot(query=query(status="unhealthy"))
    assert [r["host"] for r in only["endpoints"]] == ["gpu-0004"] and only["total"] == 1
    assert set(only["resources"]) == {"gpu-0004"}  # the rows' hosts only
    assert services.build_snapshot(query=query(q="RACK"))["total"] == 1
    held = services.build_snapshot(query=query(model="m1"))
    assert all(any(m["name"] == "m1" for m in r["models"]) for r in held["endpoints"]) and held["total"] == 2
    assert services.build_snapshot(query=query(model="llama3"))["total"] == 6
    page = services.build_snapshot(query=query(offset=2, limit=3))
    assert [r["host"] for r in page["endpoints"]] == ["gpu-0002", "gpu-0003", "gpu-0004"] and page["total"] == 6
    assert page["fleet_models"] == services.build_snapshot()["fleet_models"]  # the summary is never filtered


def test_the_dashboard_order_puts_problems_first_then_hosts_in_natural_order():
    from registry.rows import problems_first

    rows = [
        {"host": h, "port": p, "status": s}
        for h, p, s in [
            ("127.0.10.100", 11434, "healthy"),
            ("127.0.10.2", 11434, "healthy"),
            ("gpu-10", 11434, "unknown"),
            ("gpu-9", 11434, "unhealthy"),
            ("gpu-9", 80, "unknown"),
        ]
    ]
    assert [(r["host"], r["port"]) for r in problems_first(rows)] == [
        ("gpu-9", 11434),
        ("gpu-9", 80),
        ("gpu-10", 11434),
        ("127.0.10.2", 11434),
        ("127.0.10.100", 11434),
    ]


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
