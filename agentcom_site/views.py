"""Liveness and readiness probes for load balancers and orchestrators, and the Prometheus scrape."""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpResponse, JsonResponse

from agentcom_site.namespace import worker_heartbeat_key
from registry import scrape

logger = logging.getLogger(__name__)


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


def metrics(request):
    """The hub's metrics in the Prometheus text format, for an admin or metrics token (or an
    address in METRICS_ALLOWED_IPS); errors as JSON."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"error": "method_not_allowed", "detail": "/metrics answers GET only."}, status=405)
        response["Allow"] = "GET, HEAD"
        return response
    refused = scrape.refusal(
        request.META.get("HTTP_AUTHORIZATION"),
        request.META.get("REMOTE_ADDR"),
        request.META.get("HTTP_X_FORWARDED_FOR"),
    )
    if refused is not None:
        status, code, detail = refused
        response = JsonResponse({"error": code, "detail": detail}, status=status)
        if status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="agentcom"'
        return response
    try:
        body = scrape.render()
    except DatabaseError as exc:
        logger.warning("metrics: the database does not answer: %s", exc)
        response = JsonResponse(
            {"error": "overloaded", "detail": "the database does not answer; retry later."}, status=503
        )
        response["Retry-After"] = "5"
        return response
    return HttpResponse(body, content_type=scrape.CONTENT_TYPE)
