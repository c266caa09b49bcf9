"""Create an API token; the token itself is the last line printed (only its hash is stored)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from registry import services
from registry.models import Token


class Command(BaseCommand):
    help = (
        "Create a bearer token for a sidecar (may only report), an agent (may only read routes and the "
        "snapshot), a Prometheus scraper (metrics: may only read /metrics) or an admin client (may manage endpoints)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--scope", required=True, choices=Token.Scope.values)
        parser.add_argument("--label", required=True, help="Who or what uses the token, e.g. gpu-01.")
        parser.add_argument(
            "--host",
            default="",
            help="sidecar tokens: the one machine (host name as the hub shows it) the token may report for; "
            "without it, the token is bound by its first report.",
        )

    def handle(self, *args, scope: str, label: str, host: str, **options):
        try:
            token, raw = services.create_token(scope, label, host=host)
        except services.RegistryError as exc:
            raise CommandError(exc.detail) from None
        bound = f" for host {token.host}" if token.host else ""
        self.stdout.write(
            f"Created {token.scope} token {token.id} '{token.label}'{bound}. It is shown once; store it now:"
        )
        self.stdout.write(raw)
