"""One hub, one namespace on a shared Redis: the prefix of its Celery queue, broker keys and channel layer.

Imports no Django: settings.py (read by every process) and the launcher (before Django starts)
derive the same name from the same environment, cheaply (one hash, no connection).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlsplit

PREFIX = "hub-"


def database_identity(database_url: str, run_dir: Path | str) -> str:
    """What names the hub's database: the SQLite file's absolute path, else the URL without credentials."""
    if not database_url:
        return str((Path(run_dir) / "db.sqlite3").resolve())
    parts = urlsplit(database_url)
    if parts.scheme.startswith("sqlite"):
        # sqlite:///relative/path and sqlite:////absolute/path, as dj-database-url reads them.
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return str(Path(path).resolve()) if path and path != ":memory:" else database_url
    host = (parts.hostname or "").lower()
    return f"{parts.scheme}://{host}:{parts.port or ''}{parts.path}"


def default_namespace(database_url: str, run_dir: Path | str) -> str:
    """`hub-` and 10 hex digits of the database identity: hubs on one database share a namespace."""
    digest = hashlib.sha256(database_identity(database_url, run_dir).encode()).hexdigest()
    return PREFIX + digest[:10]


def hub_namespace(environ=os.environ, *, run_dir: Path | str | None = None) -> str:
    """AGENTCOM_NAMESPACE if set, else the default derived from DATABASE_URL / the run folder."""
    if explicit := environ.get("AGENTCOM_NAMESPACE"):
        return explicit
    if run_dir is None:
        base = Path(__file__).resolve().parent.parent
        run_dir = environ.get("AGENTCOM_RUN_DIR") or base / "run"
    return default_namespace(environ.get("DATABASE_URL", ""), run_dir)


def worker_heartbeat_key(namespace: str) -> str:
    """Set by every live Celery worker of the hub with a short expiry; /readyz looks for it."""
    return f"{namespace}:worker-alive"
