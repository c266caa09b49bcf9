"""The one place that changes registry state; REST, admin, WebSocket, tasks all call here.

One module per kind of state: endpoints (registration), probing (probe results), reports
(sidecar reports, host resources), tokens, and reading (rows and snapshots, no writes).
Callers import from `registry.services`; the modules are its parts, not separate APIs.
"""

from registry.services.common import (
    PROBE_TASK,
    NotFound,
    RegistryError,
    allowed_networks,
    validation_message,
)
from registry.services.curves import endpoint_history, host_history, hosts_history
from registry.services.endpoints import (
    MAX_BULK_ENDPOINTS,
    _advertised,
    check_registrable,
    get_endpoint,
    parse_endpoint,
    register_endpoint,
    register_endpoints,
    remove_endpoint,
    remove_endpoints,
    update_endpoint,
)
from registry.services.history import prune_history, prune_snapshots, roll_up
from registry.services.probing import (
    EXPIRES_AT_SLACK_SECONDS,
    RECORD_BATCH,
    claim_for_probe,
    probe,
    queue_probe,
    record_probe_results,
    release_claim,
    sweep_chunks,
)
from registry.services.reading import (
    MAX_PAGE,
    EndpointQuery,
    build_snapshot,
    endpoint_rows,
    find_endpoints,
    fleet_models,
    fleet_summary,
    host_resources,
    snapshot_in_order,
    snapshot_rest,
)
from registry.services.reports import (
    check_report,
    client_address,
    parse_report,
    record_report,
    record_reports,
    same_machine,
    trusted_proxies,
)
from registry.services.tokens import (
    TokenInfo,
    authenticate_token,
    bind_token,
    cached_token,
    create_token,
    forget_cached_tokens,
    note_token_use,
    refresh_token_cache,
    revoke_tokens,
    token_cache_fresh,
)


def forget_process_caches() -> None:
    """Drop what this process remembers of the database (tests: ids repeat between tests)."""
    forget_cached_tokens()
    _advertised.clear()


__all__ = [
    "EXPIRES_AT_SLACK_SECONDS",
    "EndpointQuery",
    "MAX_BULK_ENDPOINTS",
    "MAX_PAGE",
    "NotFound",
    "PROBE_TASK",
    "RECORD_BATCH",
    "RegistryError",
    "TokenInfo",
    "allowed_networks",
    "authenticate_token",
    "bind_token",
    "build_snapshot",
    "cached_token",
    "check_registrable",
    "check_report",
    "claim_for_probe",
    "client_address",
    "create_token",
    "endpoint_history",
    "endpoint_rows",
    "find_endpoints",
    "fleet_models",
    "fleet_summary",
    "forget_cached_tokens",
    "forget_process_caches",
    "get_endpoint",
    "host_history",
    "host_resources",
    "hosts_history",
    "note_token_use",
    "parse_endpoint",
    "parse_report",
    "probe",
    "prune_history",
    "prune_snapshots",
    "queue_probe",
    "record_probe_results",
    "record_report",
    "record_reports",
    "refresh_token_cache",
    "register_endpoint",
    "register_endpoints",
    "release_claim",
    "remove_endpoint",
    "remove_endpoints",
    "revoke_tokens",
    "roll_up",
    "same_machine",
    "snapshot_in_order",
    "snapshot_rest",
    "sweep_chunks",
    "token_cache_fresh",
    "trusted_proxies",
    "update_endpoint",
    "validation_message",
]
