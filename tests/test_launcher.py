"""The first run creates the admin user once, with a password saved only for the user; the
launcher picks its Redis: REDIS_URL if given, else one answering on localhost:6379, else its own."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import socketserver
import sqlite3
import stat
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
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


class _PongHandler(socketserver.StreamRequestHandler):
    """Answers like Redis: +PONG to PING, and with a password set, -NOAUTH until AUTH matches."""

    def handle(self):
        authed = self.server.password is None
        for line in self.rfile:
            command, _, argument = line.strip().decode().partition(" ")
            if command.upper() == "AUTH":
                authed = argument == self.server.password
                self.wfile.write(b"+OK\r\n" if authed else b"-WRONGPASS invalid password\r\n")
            elif command.upper() == "PING":
                self.wfile.write(b"+PONG\r\n" if authed else b"-NOAUTH Authentication required.\r\n")
            self.wfile.flush()


@contextmanager
def fake_redis(port: int = 0, password: str | None = None):
    """A TCP server on 127.0.0.1 that speaks just enough RESP to answer PING; yields its port."""
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", port), _PongHandler) as server:
        server.daemon_threads = True
        server.password = password
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def test_redis_answers_only_to_a_real_pong_and_sends_the_password_from_the_url():
    from agentcom_site.launcher import redis_answers

    with fake_redis() as port:
        assert redis_answers(f"redis://127.0.0.1:{port}/0")
    with fake_redis(password="s3cret") as port:
        assert redis_answers(f"redis://:s3cret@127.0.0.1:{port}/0")
        assert not redis_answers(f"redis://:wrong@127.0.0.1:{port}/0")
        assert not redis_answers(f"redis://127.0.0.1:{port}/0")
    assert not redis_answers(f"redis://127.0.0.1:{closed_port()}/0")


def test_a_given_redis_url_is_used_as_it_is_and_nothing_is_started(monkeypatch, tmp_path, capsys):
    from agentcom_site import launcher

    monkeypatch.setattr(launcher, "RUN_DIR", tmp_path)
    with fake_redis() as port:
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{port}/3")
        redis = launcher.Redis()
        assert redis.start() == f"redis://127.0.0.1:{port}/3"
        assert redis.process is None
    assert "warning" not in capsys.readouterr().out
    # Given but silent (not up yet): still the one used, with a warning, and no private server.
    silent = f"redis://127.0.0.1:{closed_port()}/0"
    monkeypatch.setenv("REDIS_URL", silent)
    redis = launcher.Redis()
    assert redis.start() == silent
    assert redis.process is None and not (tmp_path / "redis").exists()
    assert f"REDIS_URL={silent} does not answer" in capsys.readouterr().out


def test_without_redis_url_a_redis_answering_on_localhost_6379_is_used(monkeypatch, tmp_path):
    from agentcom_site import launcher

    monkeypatch.setattr(launcher, "RUN_DIR", tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)

    def choose() -> launcher.Redis:
        redis = launcher.Redis()
        assert redis.start() == "redis://127.0.0.1:6379/0"
        return redis

    if launcher.redis_answers("redis://127.0.0.1:6379/0"):  # a shared Redis runs here already
        redis = choose()
    else:
        try:
            server = fake_redis(6379)
            server.__enter__()
        except OSError:
            pytest.skip("port 6379 is taken by something that does not answer PING")
        try:
            redis = choose()
        finally:
            server.__exit__(None, None, None)
    assert redis.process is None and not (tmp_path / "redis").exists()


CHOOSE_IN_AN_EMPTY_NETWORK = """
import json, os
from agentcom_site import launcher
os.environ.pop("REDIS_URL", None)
redis = launcher.Redis()
url = redis.start()
seen = {"url": url, "started": redis.process is not None, "answers": launcher.redis_answers(url)}
redis.stop()
seen["answers_after_stop"] = launcher.redis_answers(url)
print(json.dumps(seen))
"""


def run_in_an_empty_network(code: str, env: dict) -> subprocess.CompletedProcess:
    """Run Python in a fresh network namespace: its own loopback, where nothing listens on 6379."""
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"needs unprivileged network namespaces (unshare -rn): {probe.stderr.decode().strip()}")
    return subprocess.run(
        ["unshare", "-rn", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def test_with_no_redis_anywhere_the_launcher_starts_a_private_one_and_stops_it(tmp_path):
    env = dict(os.environ, AGENTCOM_RUN_DIR=str(tmp_path))
    env.pop("REDIS_URL", None)
    done = run_in_an_empty_network(CHOOSE_IN_AN_EMPTY_NETWORK, env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["url"] != "redis://127.0.0.1:6379/0" and seen["url"].startswith("redis://127.0.0.1:")
    assert seen == {"url": seen["url"], "started": True, "answers": True, "answers_after_stop": False}
    assert "started a private redis-server" in done.stdout
    assert (tmp_path / "redis" / "redis.log").exists()
