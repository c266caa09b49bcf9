"""Every answer under /api/ is JSON `{"error", "detail"}`, also Django's own 404/405/500 pages."""

from __future__ import annotations

import logging

from django.db import OperationalError
from django.http import JsonResponse

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
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
            return JsonResponse({"error": _CODES.get(status, "error"), "detail": detail}, status=status)
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
