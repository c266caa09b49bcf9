from __future__ import annotations

from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "LLM registry"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from registry import receivers  # noqa: F401  (alerts listen to the registry's events)
