"""/healthz answers while the process is up; /readyz only when the database and Redis answer."""

from __future__ import annotations


def test_healthz_answers_200(client):
    assert client.get("/healthz").status_code == 200


def test_readyz_answers_200_when_database_and_redis_answer(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


def test_readyz_answers_503_when_redis_is_down(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["redis"].startswith("error")


def test_root_redirects_to_dashboard_and_anonymous_to_login(client, db):
    assert client.get("/").url == "/dashboard/"
    assert client.get("/dashboard/").url.startswith("/accounts/login/")
