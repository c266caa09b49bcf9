from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Live dashboard"

    def ready(self) -> None:
        from dashboard import receivers  # noqa: F401  (connects the registry's signals)
