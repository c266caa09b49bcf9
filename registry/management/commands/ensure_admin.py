"""On an empty database, create the superuser `admin` and say how to log in."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from agentcom_site.files import write_private


class Command(BaseCommand):
    help = "Create the superuser 'admin' when no user exists (password from DJANGO_SUPERUSER_PASSWORD or generated)."

    def handle(self, *args, **options):
        users = get_user_model()
        password_file = Path(settings.RUN_DIR) / "admin-password"
        if users.objects.exists():
            where = f" (password saved in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"Log in as an existing user{where}.")
            return
        # Reuse a password saved earlier (e.g. by `make run` for `make demo`'s own database).
        saved = password_file.read_text().strip() if password_file.exists() else ""
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD") or saved or secrets.token_urlsafe(12)
        users.objects.create_superuser("admin", "", password)
        if os.environ.get("DJANGO_SUPERUSER_PASSWORD"):
            self.stdout.write("Created superuser 'admin' with the password from DJANGO_SUPERUSER_PASSWORD.")
        elif saved:
            self.stdout.write(f"Created superuser 'admin' with the password saved in {password_file}.")
        else:
            write_private(password_file, password + "\n")
            self.stdout.write(f"Created superuser 'admin' with password: {password}")
            self.stdout.write(f"(shown once; saved in {password_file}, readable only by you)")
