"""Apply pending migrations and make sure an admin exists: `make run`'s start-up step, in one process."""

from __future__ import annotations

from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Apply pending migrations, then create the superuser 'admin' when no user exists."

    def handle(self, *args, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("ensure_admin", stdout=self.stdout)
