"""Each hub's namespace comes from its database: same database, same namespace; another, another."""

from __future__ import annotations

from django.conf import settings

from agentcom_site.namespace import hub_namespace


def test_the_default_namespace_follows_the_database(tmp_path):
    one = hub_namespace({}, run_dir=tmp_path / "a")
    assert one == hub_namespace({}, run_dir=tmp_path / "a" / ".." / "a")  # the same file, however written
    assert one == hub_namespace({"DATABASE_URL": f"sqlite:///{tmp_path / 'a' / 'db.sqlite3'}"}, run_dir="/elsewhere")
    assert one != hub_namespace({}, run_dir=tmp_path / "b")
    pg = hub_namespace({"DATABASE_URL": "postgres://hub:secret@DB.example:5432/registry"}, run_dir=tmp_path)
    assert pg == hub_namespace({"DATABASE_URL": "postgres://hub:other@db.example:5432/registry"}, run_dir=tmp_path)
    assert pg != hub_namespace({"DATABASE_URL": "postgres://hub@db.example:5432/staging"}, run_dir=tmp_path)
    assert pg.startswith("hub-") and "secret" not in pg


def test_an_explicit_namespace_wins_and_names_every_redis_key_of_the_hub():
    assert hub_namespace({"AGENTCOM_NAMESPACE": "lab", "DATABASE_URL": "sqlite:///x"}) == "lab"
    namespace = settings.AGENTCOM_NAMESPACE
    assert settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] == f"{namespace}:"
