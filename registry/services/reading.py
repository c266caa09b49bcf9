"""Reading the registry: rows, snapshots, the fleet summary."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from registry.models import Endpoint, EndpointModel, Host
from registry.rows import RESOURCE_FIELDS, filter_endpoints, ids_problems_first, resources_row
from registry.rows import endpoint_rows as _endpoint_rows
from registry.services.common import RegistryError

logger = logging.getLogger(__name__)


def endpoint_rows(ids: Iterable[int] | None = None) -> list[dict]:
    """Rows for the given endpoints (all when ids is None), in a fixed number of queries."""
    return _endpoint_rows(ids)


@dataclass(frozen=True, slots=True)
class EndpointQuery:
    """Which endpoints a reader wants: filters (each optional) and a page."""

    status: str = ""
    model: str = ""
    q: str = ""
    offset: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.status and self.status not in Endpoint.Status.values:
            raise RegistryError("invalid_input", f"status must be one of {', '.join(Endpoint.Status.values)}.")
        if self.offset < 0 or (self.limit is not None and not 1 <= self.limit <= MAX_PAGE):
            raise RegistryError("invalid_input", f"offset must be 0 or more and limit from 1 to {MAX_PAGE}.")

    @property
    def everything(self) -> bool:
        return self == EndpointQuery()


MAX_PAGE = 5000


def find_endpoints(query: EndpointQuery) -> tuple[list[dict], int]:
    """(rows of one page of the endpoints matching the filters, how many match in all)."""
    if query.everything:
        rows = _endpoint_rows()
        return rows, len(rows)
    matching = filter_endpoints(Endpoint.objects.all(), status=query.status, model=query.model, q=query.q)
    total = matching.count()
    end = None if query.limit is None else query.offset + query.limit
    return _endpoint_rows(endpoints=matching.order_by("address", "port")[query.offset : end]), total


def host_resources(names: Iterable[str] | None = None, *, now: datetime | None = None) -> dict[str, dict | None]:
    """Latest resources per host name (None for a host that never reported), in one query."""
    now = now or timezone.now()
    qs = Host.objects.filter(last_report_at__isnull=False)
    if names is not None:
        names = list(names)
        qs = qs.filter(name__in=names)
    found = {values["name"]: resources_row(values, now) for values in qs.values(*RESOURCE_FIELDS)}
    if names is None:
        return found
    return {name: found.get(name) for name in names}  # None tells a reader to drop the host


def fleet_summary() -> tuple[dict[str, int], dict[str, int]]:
    """(model name -> hosts holding it, model name -> hosts where it is loaded), most widespread
    first, counting only endpoints that answer: a host that is down serves no model. One query."""
    counted = (
        EndpointModel.objects.filter(endpoint__status=Endpoint.Status.HEALTHY)
        .values("name")
        .annotate(
            hosts=Count("endpoint__host_id", distinct=True),
            loaded_on=Count("endpoint__host_id", distinct=True, filter=Q(loaded=True)),
        )
        .values_list("name", "hosts", "loaded_on")
    )
    ranked = sorted(counted, key=lambda c: (-c[1], c[0]))
    return {name: hosts for name, hosts, _ in ranked}, {name: n for name, _, n in ranked if n}


def fleet_models() -> dict[str, int]:
    """Model name -> number of distinct reachable hosts holding it, most widespread first."""
    return fleet_summary()[0]


def build_snapshot(*, now: datetime | None = None, query: EndpointQuery | None = None) -> dict:
    """The registry (or the page of it `query` asks for): endpoints, latest resources per host,
    fleet model summary, in a fixed number of queries. A filtered snapshot carries the
    resources of its endpoints' hosts only."""
    now = now or timezone.now()
    query = query or EndpointQuery()
    rows, total = find_endpoints(query)
    held, loaded = fleet_summary()
    hosts = None if query.everything else {row["host"] for row in rows}
    resources = (
        host_resources(hosts, now=now)
        if hosts is None
        else {name: res for name, res in host_resources(hosts, now=now).items() if res is not None}
    )
    return {
        "server_time": now.isoformat(),
        "stale_after_seconds": settings.STALE_AFTER_SECONDS,
        "total": total,
        "endpoints": rows,
        "resources": resources,
        "fleet_models": held,
        "fleet_loaded": loaded,
    }


def snapshot_in_order(first: int) -> tuple[dict, list[int]]:
    """The dashboard's opening: a snapshot of the first `first` endpoints in the dashboard's
    order (problems first, natural host order), with `total` the whole count, and the ids of
    the rest in that order (snapshot_rest reads them). Quick whatever the fleet size, so the
    first screen paints before the rest is read."""
    now = timezone.now()
    order = ids_problems_first()
    head = order[:first]
    by_id = {row["id"]: row for row in _endpoint_rows(head)}
    rows = [by_id[i] for i in head if i in by_id]
    held, loaded = fleet_summary()
    # All of it fits: every host's resources too (also those of hosts with no endpoint).
    resources = host_resources({row["host"] for row in rows} if order[first:] else None, now=now)
    snapshot = {
        "server_time": now.isoformat(),
        "stale_after_seconds": settings.STALE_AFTER_SECONDS,
        "total": len(order),
        "endpoints": rows,
        "resources": {name: res for name, res in resources.items() if res is not None},
        "fleet_models": held,
        "fleet_loaded": loaded,
    }
    return snapshot, order[first:]


def snapshot_rest(ids: list[int], sent_hosts: Iterable[str]) -> dict:
    """The rows of `ids` in that order, and the resources of every host not in `sent_hosts`."""
    by_id = {row["id"]: row for row in _endpoint_rows(ids)} if ids else {}
    sent = set(sent_hosts)
    resources = {name: res for name, res in host_resources().items() if name not in sent}
    return {"endpoints": [by_id[i] for i in ids if i in by_id], "resources": resources}
