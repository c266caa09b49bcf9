"""Files holding secrets (database with sessions, WAL, secret key, admin password) are 0600 from the start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agentcom_site import files

ROOT = Path(__file__).resolve().parent.parent.parent

# A fresh hub's first start, as `make run` does it (migrate, ensure_admin), under the common umask
# 022 that would leave files readable by every local user; then the modes while a connection is open
# (SQLite's -wal and -shm exist only then).
FIRST_START = """
import json, os
os.umask(0o022)
import django
django.setup()
from django.core.management import call_command
from django.db import connection
call_command("migrate", verbosity=0)
call_command("ensure_admin")
with connection.cursor() as cursor:
    cursor.execute("SELECT COUNT(*) FROM django_session")
run = os.environ["AGENTCOM_RUN_DIR"]
print(json.dumps({name: oct(os.stat(os.path.join(run, name)).st_mode & 0o777) for name in sorted(os.listdir(run))}))
"""


def test_a_fresh_hub_creates_its_secret_files_readable_only_by_its_user(tmp_path):
    env = dict(os.environ, AGENTCOM_RUN_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="agentcom_site.settings")
    for name in ("DATABASE_URL", "DJANGO_SECRET_KEY", "DJANGO_SUPERUSER_PASSWORD"):
        env.pop(name, None)
    started = subprocess.run(
        [sys.executable, "-c", FIRST_START], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    modes = json.loads(started.stdout.splitlines()[-1])
    for name in ("db.sqlite3", "db.sqlite3-wal", "db.sqlite3-shm", "secret_key", "admin-password"):
        assert modes.get(name) == "0o600", f"{name}: {modes.get(name)} (all: {modes})"


def test_files_left_readable_by_an_older_version_are_made_private(tmp_path):
    database = tmp_path / "db.sqlite3"
    for path in (database, tmp_path / "db.sqlite3-wal", tmp_path / "secret_key"):
        path.write_text("x")
        path.chmod(0o644)
    files.private_sqlite(database)
    files.read_or_create_secret(tmp_path / "secret_key")
    assert {p.name: files.mode(p) for p in tmp_path.iterdir()} == {
        "db.sqlite3": 0o600,
        "db.sqlite3-wal": 0o600,
        "secret_key": 0o600,
    }


def test_the_secret_key_is_made_once_and_kept(tmp_path):
    first = files.read_or_create_secret(tmp_path / "secret_key")
    assert len(first) >= 50
    assert files.read_or_create_secret(tmp_path / "secret_key") == first
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no temporary file left behind


def test_an_existing_password_file_is_rewritten_private(tmp_path):
    path = tmp_path / "admin-password"
    path.write_text("old\n")
    path.chmod(0o644)
    files.write_private(path, "new\n")
    assert path.read_text() == "new\n"
    assert files.mode(path) == 0o600
