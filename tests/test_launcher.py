"""The first run creates the admin user once, with a password saved only for the user."""

from __future__ import annotations

import contextlib
import io
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

from django.contrib.auth.models import User
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent


def test_first_run_creates_admin_with_a_private_saved_password(db, settings, tmp_path, monkeypatch):
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    settings.RUN_DIR = tmp_path
    out = io.StringIO()
    call_command("ensure_admin", stdout=out)
    saved = (tmp_path / "admin-password").read_text().strip()
    assert saved in out.getvalue()
    assert stat.S_IMODE((tmp_path / "admin-password").stat().st_mode) == 0o600
    assert User.objects.get(username="admin").check_password(saved)
    again = io.StringIO()
    call_command("ensure_admin", stdout=again)
    assert saved not in again.getvalue()
    assert User.objects.count() == 1


def test_superuser_password_from_the_environment_wins(db, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "from-the-env-123")
    settings.RUN_DIR = tmp_path
    call_command("ensure_admin", stdout=io.StringIO())
    assert User.objects.get(username="admin").check_password("from-the-env-123")
    assert not (tmp_path / "admin-password").exists()


def test_without_any_redis_the_launcher_starts_a_private_one_and_stops_it(tmp_path, monkeypatch):
    from agentcom_site import launcher

    monkeypatch.setattr(launcher, "RUN_DIR", tmp_path)
    redis = launcher.Redis()
    url = redis._start_private()
    try:
        assert launcher.redis_answers(url)
        assert (tmp_path / "redis").is_dir()
    finally:
        redis.stop()
    assert not launcher.redis_answers(url)


def test_start_up_prepares_only_when_the_database_lacks_a_migration_or_a_user(tmp_path):
    from django.conf import settings

    from agentcom_site import launcher

    db_file = tmp_path / "hub.sqlite3"
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(db_file)}
    apps = settings.INSTALLED_APPS
    assert not launcher.nothing_to_prepare(database, apps)  # no database yet

    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="agentcom_site.settings",
        DATABASE_URL=f"sqlite:///{db_file}",
        AGENTCOM_RUN_DIR=str(tmp_path),
        DJANGO_SUPERUSER_PASSWORD="from-the-env-123",
    )
    cmd = [sys.executable, "manage.py", "prepare"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert "Created superuser 'admin'" in done.stdout
    assert launcher.nothing_to_prepare(database, apps)

    # As after a pull that brings a new migration: the database lacks the latest one.
    *_, previous, _ = sorted(launcher._migration_names("registry"))
    unapply = [sys.executable, "manage.py", "migrate", "registry", previous]
    subprocess.run(unapply, cwd=ROOT, env=env, capture_output=True, check=True)
    assert not launcher.nothing_to_prepare(database, apps)
    subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, check=True)
    assert launcher.nothing_to_prepare(database, apps)

    with contextlib.closing(sqlite3.connect(db_file)) as conn, conn:
        conn.execute("DELETE FROM auth_user")
    assert not launcher.nothing_to_prepare(database, apps)  # no one could log in
    assert not launcher.nothing_to_prepare({**database, "ENGINE": "django.db.backends.postgresql"}, apps)
    assert not launcher.nothing_to_prepare(database, [*apps, "registry.apps.RegistryConfig"])


def test_the_launcher_reads_the_same_apps_and_database_as_the_settings(monkeypatch, tmp_path):
    from django.conf import settings

    from agentcom_site import launcher

    assert launcher.installed_apps() == list(settings.INSTALLED_APPS)
    monkeypatch.setattr(launcher, "RUN_DIR", tmp_path)
    assert launcher.hub_database({})["NAME"] == str(tmp_path / "db.sqlite3")
    url = f"sqlite:///{tmp_path / 'other.sqlite3'}"
    assert launcher.hub_database({"DATABASE_URL": url})["NAME"] == str(tmp_path / "other.sqlite3")
