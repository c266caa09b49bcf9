"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse

from agentcom_site.namespace import worker_heartbeat_key


def healthz(request):
    """200 while the process answers."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """200 only when the database and Redis answer and a Celery worker is alive; else 503 naming what is down.

    The worker's liveness is a key each worker refreshes in Redis (agentcom_site/celery.py): one GET
    on the connection that PINGs, so readiness stays as cheap as before.
    """
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # readiness reports any failure instead of raising
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
            checks["redis"] = "ok"
            alive = client.get(worker_heartbeat_key(settings.AGENTCOM_NAMESPACE))
            checks["worker"] = "ok" if alive else "down: no Celery worker of this hub answered lately"
        finally:
            client.close()
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
        checks["worker"] = "unknown: Redis does not answer"
    ready = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503)
