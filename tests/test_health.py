"""/healthz answers while the process is up; /readyz only when the database, Redis and a worker answer."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings as django_settings

from agentcom_site.namespace import worker_heartbeat_key


@pytest.fixture
def worker_alive():
    """What a live Celery worker of this hub keeps in Redis (agentcom_site/celery.py)."""
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    key = worker_heartbeat_key(django_settings.AGENTCOM_NAMESPACE)
    client.set(key, "celery@test", ex=30)
    yield
    client.delete(key)
    client.close()


def test_healthz_answers_200(client):
    assert client.get("/healthz").status_code == 200


def test_readyz_answers_200_when_database_redis_and_a_worker_answer(client, db, worker_alive):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok", "worker": "ok"}


def test_readyz_answers_503_naming_the_worker_when_no_worker_is_alive(client, db):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["worker"].startswith("down") and body["database"] == "ok" and body["redis"] == "ok"


def test_readyz_answers_503_when_redis_is_down(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error")


def test_root_redirects_to_dashboard_and_anonymous_to_login(client, db):
    assert client.get("/").url == "/dashboard/"
    assert client.get("/dashboard/").url.startswith("/accounts/login/")
