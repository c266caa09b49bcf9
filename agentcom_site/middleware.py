"""Every answer under /api/ is JSON `{"error", "detail"}`, also Django's own 404/405/500 pages."""

from __future__ import annotations

import logging

from django.db import OperationalError
from django.http import JsonResponse

from registry import metrics
from registry.ingest import REPORT_PATH

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
_KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
_DETAILS = {
    404: "no such API route; see /api/v1/docs.",
    405: "this route does not take that method; see /api/v1/docs.",
}


class ApiJsonErrors:
    """Turn HTML error pages and unhandled exceptions on API paths into JSON errors."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            request.path.startswith(API_PREFIX)
            and response.status_code >= 400
            and not response.get("Content-Type", "").startswith("application/json")
        ):
            status = response.status_code
            detail = _DETAILS.get(status) or f"HTTP {status} {getattr(response, 'reason_phrase', '')}".strip()
            replaced = JsonResponse({"error": _CODES.get(status, "error"), "detail": detail}, status=status)
            for header in _KEPT_HEADERS:  # e.g. a 405 must still say which methods the route takes
                if header in response:
                    replaced[header] = response[header]
            return replaced
        return response

    def process_exception(self, request, exception):
        if not request.path.startswith(API_PREFIX):
            return None
        if isinstance(exception, OperationalError):
            response = JsonResponse(
                {"error": "overloaded", "detail": "the database is busy or unreachable; retry later."}, status=503
            )
            response["Retry-After"] = "2"
            return response
        logger.error("unexpected error in %s %s", request.method, request.path, exc_info=exception)
        return JsonResponse(
            {"error": "internal_error", "detail": "the hub failed to handle this request; see its log."}, status=500
        )


# Public API pages: the description and its interactive docs need no credentials.
API_PUBLIC = ("/api/v1/openapi.json", "/api/v1/docs")


class ApiNeedsCredentials:
    """A request to the API with no credentials at all is 401, whatever its route and method.

    Runs after AuthenticationMiddleware. Without this, a POST with neither token nor session met
    django-ninja's CSRF check first and was told `403 CSRF check Failed`.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if (
            request.path.startswith(API_PREFIX)
            and not request.path.startswith(API_PUBLIC)
            and "HTTP_AUTHORIZATION" not in request.META
            and not request.user.is_authenticated
        ):
            if request.path == REPORT_PATH:
                metrics.report_refused("unauthorized")
            return unauthorized("send 'Authorization: Bearer <token>' or log in.")
        return self.get_response(request)


def unauthorized(detail: str) -> JsonResponse:
    response = JsonResponse({"error": "unauthorized", "detail": detail}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="agentcom"'
    return response


class ContentSecurityPolicy:
    """Every page may run only the hub's own scripts and styles, and talk only to the hub (WebSocket included)."""

    POLICY = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if "Content-Security-Policy" not in response:
            response["Content-Security-Policy"] = f"{self.POLICY}; connect-src {self._connect_sources(request)}"
        return response

    @staticmethod
    def _connect_sources(request) -> str:
        try:
            host = request.get_host()  # validated against ALLOWED_HOSTS
        except Exception:  # DisallowedHost: a 400 page, nothing to connect to
            return "'self'"
        # 'self' covers ws: and wss: to the same host and port in CSP level 3; older browsers need it named.
        return f"'self' {'wss' if request.is_secure() else 'ws'}://{host}"
