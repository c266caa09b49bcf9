"""Sidecar reports: checking them and recording a host's resources."""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from types import SimpleNamespace

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from pydantic import ValidationError

from registry import signals
from registry.models import Endpoint, Event, Host, ResourceSnapshot, Token
from registry.schemas import SidecarReport
from registry.services.common import RegistryError, _networks, validation_message
from registry.services.endpoints import _advertised, _allowed_spec, _remember
from registry.services.events import endpoint_event, host_back_event, record_events
from registry.services.probing import _probe_soon
from registry.services.tokens import TokenInfo, note_tokens_used
from registry.status import is_stale

logger = logging.getLogger(__name__)


def parse_report(
    data: object, token: TokenInfo | None = None, peer: str | None = None, *, resolve: bool = True
) -> SidecarReport:
    """Validate a report body, then `check_report` it (for `token`, sent from `peer`)."""
    try:
        report = SidecarReport.model_validate(data)
    except ValidationError as exc:
        raise RegistryError("invalid_report", validation_message(exc)) from None
    check_report(report, token, peer, resolve=resolve)
    return report


def check_report(
    report: SidecarReport, token: TokenInfo | None = None, peer: str | None = None, *, resolve: bool = True
) -> None:
    """Refuse (before anything is stored) a report the hub must not take.

    Any token: the advertised Ollama must be inside REGISTRY_ALLOWED_NETWORKS. A sidecar token
    also reports only for the host it is bound to, and advertises only an Ollama on the machine
    the report comes from (`peer`, the client address as the hub sees it): otherwise a sidecar
    token could make the hub probe any port anywhere, or overwrite another host.
    """
    target = report.ollama_host_port()
    if target is not None:
        _check_advertised(*target, settings.REGISTRY_ALLOWED_NETWORKS)
    if token is None or token.scope != Token.Scope.SIDECAR:
        return
    if token.host and token.host != report.host:
        raise RegistryError(
            "wrong_host",
            f"this sidecar token reports for host {token.host!r} only, not {report.host!r}.",
            status_code=403,
        )
    if target is None:
        return
    here = same_machine(target[0], peer, resolve=resolve)
    if here is None:
        raise RegistryError("lookup_needed", f"{target[0]} must be resolved first.")
    if not here:
        raise RegistryError(
            "not_this_machine",
            f"ollama_url {report.ollama_url} is not on the machine sending the report ({peer or 'unknown'}); "
            "a sidecar may only advertise its own Ollama.",
            status_code=403,
        )


def same_machine(address: str, peer: str | None, *, resolve: bool) -> bool | None:
    """Whether `address` (an IP or a name) is the machine at `peer`; None when a name would need
    resolving and `resolve` is false. Every loopback address is this hub's own machine."""
    try:
        peer_ip = _plain_ip(ipaddress.ip_address(peer or ""))
    except ValueError:
        return False
    try:
        candidates = [_plain_ip(ipaddress.ip_address(address))]
    except ValueError:
        cached = _resolved_cache.get(address)
        if cached is not None and cached[0] >= time.monotonic():
            candidates = cached[1]
        elif resolve:
            candidates = _resolved(address)
        else:
            return None
    return any(ip == peer_ip or (ip.is_loopback and peer_ip.is_loopback) for ip in candidates)


def _plain_ip(ip):
    return ip.ipv4_mapped or ip if ip.version == 6 else ip


_resolved_cache: dict[str, tuple[float, list]] = {}


def _resolved(name: str) -> list:
    """The addresses `name` resolves to (cached 60 s; reports from one host repeat every few seconds)."""
    cached = _resolved_cache.get(name)
    if cached and cached[0] >= time.monotonic():
        return cached[1]
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        found = [_plain_ip(ipaddress.ip_address(info[4][0].split("%")[0])) for info in infos]
    except (OSError, ValueError):
        found = []
    if len(_resolved_cache) > 10_000:
        _resolved_cache.clear()
    _resolved_cache[name] = (time.monotonic() + 60, found)
    return found


def client_address(peer: str | None, forwarded_for: str | None) -> str | None:
    """The reporting machine's address: the TCP peer, or, when the peer is a trusted proxy
    (REGISTRY_TRUSTED_PROXIES), the last address in X-Forwarded-For that is not one."""
    trusted = trusted_proxies()
    if not peer or not trusted or not forwarded_for or not _in(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if not _in(hop, trusted):
            return hop
    return peer


def _in(address: str, networks) -> bool:
    try:
        ip = _plain_ip(ipaddress.ip_address(address))
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


def trusted_proxies():
    return _networks(settings.REGISTRY_TRUSTED_PROXIES) if settings.REGISTRY_TRUSTED_PROXIES else ()


@lru_cache(maxsize=4096)  # every report of a host names the same Ollama
def _check_advertised(address: str, port: int, networks: str) -> None:
    _allowed_spec(address, port, "")


def record_report(report: SidecarReport, *, now: datetime | None = None) -> int | None:
    """Store one sidecar report; return the id of its Ollama endpoint (None without one)."""
    return record_reports([report], now=now)[0]


def record_reports(
    reports: Sequence[SidecarReport], *, token_ids: Iterable[int] = (), now: datetime | None = None
) -> list[int | None]:
    """Store a batch of checked reports in one transaction; return each one's endpoint id.

    1. Per host the last report of the batch wins; its values become the host's latest, exactly.
    2. A history row is written once per RESOURCE_HISTORY_SECONDS per host, hosts staggered.
    3. Dashboards are told only about hosts whose shown values changed (rounded as the page
       shows them), plus a heartbeat every STALE_AFTER_SECONDS / 3 so no page thinks it stale.
    4. An advertised Ollama is registered (source auto) when it is not yet known.
    5. A host marked silent (Host.silent_since, by mark_silent_hosts) is back: host_back event.
    """
    now = now or timezone.now()
    latest: dict[str, SidecarReport] = {}
    for report in reports:
        latest.pop(report.host, None)  # keep arrival order: re-insert at the end
        latest[report.host] = report
    with transaction.atomic():
        hosts = _hosts_named(latest)
        announced, history, events, back = [], [], [], []
        for name, report in latest.items():
            host = hosts[name]
            if _worth_announcing(host, report, now):
                host.announced_at = now
                announced.append(name)
            if host.silent_since is not None:  # read with the row anyway: no extra query
                events.append(host_back_event(name, host.silent_since, host.last_report_at, now))
                back.append(host.id)
            _apply_report(host, report, now)
            if _history_due(host, now):
                host.history_at = now
                history.append(_history_row(host, now))
        _update_hosts(hosts[name] for name in latest)
        if back:
            # Cleared by its own statement, never by the UPDATE above: a host the beat marks silent
            # while this batch runs keeps its mark, and its next report records host_back.
            Host.objects.filter(id__in=back).update(silent_since=None)
        if history:
            ResourceSnapshot.objects.bulk_create(history)
        endpoint_ids = _register_advertised(latest, hosts, events)
        record_events(events)
        note_tokens_used(token_ids, now=now)
        if announced:
            signals.resources_changed.send(sender=Host, hosts=announced)
    return [endpoint_ids.get(report.host) for report in reports]


_HOST_REPORT_FIELDS = [
    "hostname",
    "last_report_at",
    *Host.RESOURCE_FIELDS,
    "announced_at",
    "history_at",
]


_HOST_DATETIMES = ("last_report_at", "announced_at", "history_at")


class _HostState(SimpleNamespace):
    """A host's report columns as plain values (no model instance: this runs per report)."""


def _update_hosts(hosts: Iterable[_HostState]) -> None:
    """One UPDATE statement run for many rows (Django's bulk_update builds CASE expressions
    that cost ~8 ms of CPU per row; executemany costs a few microseconds)."""
    quote, ops = connection.ops.quote_name, connection.ops
    columns = [Host._meta.get_field(name).column for name in _HOST_REPORT_FIELDS]
    sql = "UPDATE {} SET {} WHERE id = %s".format(
        quote(Host._meta.db_table), ", ".join(f"{quote(c)} = %s" for c in columns)
    )

    def value(host: _HostState, name: str):
        raw = getattr(host, name)
        if name in _HOST_DATETIMES:
            return ops.adapt_datetimefield_value(raw)
        return ops.adapt_json_value(raw, None) if name == "gpus" else raw

    rows = [[value(h, name) for name in _HOST_REPORT_FIELDS] + [h.id] for h in hosts]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _hosts_named(reports: dict[str, SidecarReport]) -> dict[str, _HostState]:
    def read(names) -> dict[str, _HostState]:
        rows = Host.objects.filter(name__in=list(names)).values("id", "name", *_HOST_REPORT_FIELDS, "silent_since")
        return {row["name"]: _HostState(**row) for row in rows}

    hosts = read(reports)
    missing = [name for name in reports if name not in hosts]
    if missing:
        Host.objects.bulk_create([Host(name=name) for name in missing], ignore_conflicts=True)
        hosts.update(read(missing))
    return hosts


def _percent(used: int | None, total: int | None) -> int | None:
    return None if used is None or not total else round(100 * used / total)


def _shown(host: _HostState | SidecarReport, gpus: list[dict]) -> tuple:
    """What the page shows of a host's resources: whole percents, totals, GPU names."""
    return (
        host.hostname,
        None if host.cpu_percent is None else round(host.cpu_percent),
        _percent(host.ram_used_bytes, host.ram_total_bytes),
        host.ram_total_bytes,
        _percent(host.vram_used_bytes, host.vram_total_bytes),
        host.vram_total_bytes,
        tuple(
            (
                g.get("index"),
                g.get("name"),
                _percent(g.get("memory_used_bytes"), g.get("memory_total_bytes")),
                g.get("memory_total_bytes"),
                None if g.get("utilization_percent") is None else round(g["utilization_percent"]),
            )
            for g in gpus
        ),
    )


def _worth_announcing(host: _HostState, report: SidecarReport, now: datetime) -> bool:
    if host.last_report_at is None or host.announced_at is None:
        return True
    if is_stale(host.last_report_at, now, settings.STALE_AFTER_SECONDS):
        return True  # back from silence
    if (now - host.announced_at).total_seconds() >= settings.STALE_AFTER_SECONDS / 3:
        return True  # heartbeat: pages judge staleness from reported_at
    return _shown(host, host.gpus or []) != _shown(report, [g.model_dump() for g in report.gpus])


def _history_due(host: _HostState, now: datetime) -> bool:
    """Whether this report starts a new history period of its host. Each host's periods are
    shifted by a fraction of the period of its own (the golden ratio spreads ids evenly), so a
    fleet that started together writes its history rows spread over the period, not all in the
    same second every minute."""
    period = settings.RESOURCE_HISTORY_SECONDS
    if host.history_at is None or period <= 0:
        return True
    shift = (host.id * 0.6180339887498949) % 1 * period

    def index(moment: datetime) -> int:
        return int((moment.timestamp() + shift) // period)

    return index(now) != index(host.history_at)


def _apply_report(host: _HostState, report: SidecarReport, now: datetime) -> None:
    host.hostname = report.hostname
    host.last_report_at = now
    host.cpu_percent = report.cpu_percent
    host.ram_used_bytes = report.ram_used_bytes
    host.ram_total_bytes = report.ram_total_bytes
    host.vram_used_bytes = report.vram_used_bytes
    host.vram_total_bytes = report.vram_total_bytes
    host.gpus = [g.model_dump() for g in report.gpus]


def _history_row(host: _HostState, now: datetime) -> ResourceSnapshot:
    return ResourceSnapshot(
        host_id=host.id,
        cpu_percent=host.cpu_percent,
        ram_used_bytes=host.ram_used_bytes,
        ram_total_bytes=host.ram_total_bytes,
        vram_used_bytes=host.vram_used_bytes,
        vram_total_bytes=host.vram_total_bytes,
        gpus=host.gpus,
        reported_at=now,
    )


def _register_advertised(
    reports: dict[str, SidecarReport], hosts: dict[str, _HostState], events: list[Event]
) -> dict[str, int]:
    """Register (source auto, in bulk) the Ollama each report advertises; return host -> endpoint id.

    An auto endpoint follows the machine its sidecar names, and the scheme of the URL it
    advertises (http or https); a manual one is never moved or changed. A new registration
    appends its `registered` event to `events`.
    """
    schemes: dict[str, str] = {}
    targets: dict[str, tuple[str, int]] = {}
    for name, report in reports.items():
        if report.ollama_url:
            schemes[name], *target = report.ollama_target()
            targets[name] = tuple(target)
    settled: dict[str, int] = {}
    now = time.monotonic()
    for name, target in list(targets.items()):
        cached = _advertised.get((*target, hosts[name].id, schemes[name]))
        if cached is not None and cached[1] > now:
            settled[name] = cached[0]
            del targets[name]
    if not targets:
        return settled

    def known() -> dict[tuple[str, int], tuple[int, int, str, str]]:
        rows = Endpoint.objects.filter(address__in={address for address, _ in targets.values()})
        columns = ("id", "address", "port", "host_id", "source", "scheme")
        return {(a, p): (i, h, src, sch) for i, a, p, h, src, sch in rows.values_list(*columns)}

    found = known()
    new = [(name, address, port) for name, (address, port) in targets.items() if (address, port) not in found]
    if new:
        Endpoint.objects.bulk_create(
            [
                Endpoint(host_id=hosts[n].id, address=a, port=p, scheme=schemes[n], source=Endpoint.Source.AUTO)
                for n, a, p in new
            ],
            ignore_conflicts=True,  # a concurrent registration of the same address won the race
        )
        found = known()
    # Ours only if auto and on this machine: a concurrent manual registration may have won the race.
    new = [
        (n, a, p) for n, a, p in new if (a, p) in found and found[(a, p)][1:3] == (hosts[n].id, Endpoint.Source.AUTO)
    ]
    created = [found[(a, p)][0] for _, a, p in new]
    events += [
        endpoint_event(
            Event.Kind.REGISTERED,
            SimpleNamespace(id=found[(a, p)][0], name="", address=a, port=p),
            host=n,
            by=f"sidecar of {n}",
        )
        for n, a, p in new
    ]
    moved, rescheme = [], []
    for name, target in targets.items():
        endpoint_id, host_id, source, scheme = found.get(target, (None, None, None, None))
        if source != Endpoint.Source.AUTO or endpoint_id in created:
            continue
        changes = {}
        if host_id != hosts[name].id:
            changes["host_id"] = hosts[name].id
        if scheme != schemes[name]:
            changes["scheme"] = schemes[name]  # the sidecar now advertises it over TLS (or no longer)
        if changes:
            Endpoint.objects.filter(id=endpoint_id).update(**changes, revision=F("revision") + 1)
            moved.append(endpoint_id)
            detail = {"by": f"sidecar of {name}"}
            if "scheme" in changes:
                detail["fields"] = {"scheme": [scheme, schemes[name]]}
                rescheme.append(endpoint_id)
            if "host_id" in changes:
                detail["moved_to"] = name
            label = SimpleNamespace(id=endpoint_id, name="", address=target[0], port=target[1])
            events.append(endpoint_event(Event.Kind.CHANGED, label, host=name, **detail))
    if created or moved:
        signals.endpoints_changed.send(sender=Endpoint, ids=created + moved)
    if created or rescheme:
        transaction.on_commit(lambda: _probe_soon(created + rescheme))
    for name, target in targets.items():
        if target in found:
            settled[name] = found[target][0]
            # Known and on its machine (or manual): the next reports skip this lookup a while.
            key = (*target, hosts[name].id, schemes[name])
            transaction.on_commit(lambda key=key, i=settled[name]: _remember(key, i))
    return settled
