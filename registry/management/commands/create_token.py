"""Create an API token; the token itself is the last line printed (only its hash is stored)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from registry import services
from registry.models import Token


class Command(BaseCommand):
    help = "Create a bearer token for a sidecar (may only report) or an admin client (may manage endpoints)."

    def add_arguments(self, parser):
        parser.add_argument("--scope", required=True, choices=Token.Scope.values)
        parser.add_argument("--label", required=True, help="Who or what uses the token, e.g. gpu-01.")

    def handle(self, *args, scope: str, label: str, **options):
        try:
            token, raw = services.create_token(scope, label)
        except services.RegistryError as exc:
            raise CommandError(exc.detail) from None
        self.stdout.write(f"Created {token.scope} token {token.id} '{token.label}'. It is shown once; store it now:")
        self.stdout.write(raw)
