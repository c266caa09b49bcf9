"""Probe endpoints now (all, or the given ids) and print what changed."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from registry.services import probe


class Command(BaseCommand):
    help = "Probe every endpoint (or the given ids) once, in this process."

    def add_arguments(self, parser):
        parser.add_argument("ids", nargs="*", type=int)

    def handle(self, *args, ids: list[int], **options):
        changed = probe(ids or None)
        self.stdout.write(f"{len(changed)} endpoint(s) changed: {changed}")
