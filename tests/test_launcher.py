"""The first run creates the admin user once, with a password saved only for the user."""

from __future__ import annotations

import io
import stat

from django.contrib.auth.models import User
from django.core.management import call_command


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
