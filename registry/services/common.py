"""Errors the registry answers with, and the networks it may reach."""

from __future__ import annotations

import logging
from functools import lru_cache

from django.conf import settings
from pydantic import ValidationError

from registry import ollama

logger = logging.getLogger(__name__)


PROBE_TASK = "registry.tasks.probe_endpoints"


class RegistryError(Exception):
    """A request the registry refuses, with a stable code and a sentence for people."""

    status_code = 400

    def __init__(self, code: str, detail: str, *, status_code: int | None = None):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code


class NotFound(RegistryError):
    status_code = 404


def validation_message(exc: ValidationError) -> str:
    """Turn pydantic's errors into one sentence naming the field."""
    parts = []
    for error in exc.errors()[:3]:
        field = ".".join(str(p) for p in error.get("loc", ()) if p != "__root__")
        message = error.get("msg", "is invalid").removeprefix("Value error, ")
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(parts)


@lru_cache(maxsize=4)
def _networks(text: str):
    return ollama.parse_networks(text)


def allowed_networks():
    return _networks(settings.REGISTRY_ALLOWED_NETWORKS)
