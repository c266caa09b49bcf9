"""requirements.txt pins only what the hub runs: every pinned distribution is imported by the hub's code."""

from __future__ import annotations

import ast
import re
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HUB_PACKAGES = ("agentcom_site", "registry", "dashboard")  # what users deploy (not devtools/, tests/, bench/)

# Loaded by name, never by an import statement in the hub's code:
LOADED_BY_NAME = {
    "daphne": "the web server, run as `python -m daphne` (agentcom_site/processes.py)",
    "channels-redis": "the channel layer, named as BACKEND in CHANNEL_LAYERS (settings.py)",
    "psycopg": "Django's PostgreSQL backend, when DATABASE_URL names PostgreSQL",
    "django-axes": "the login lockout, named in INSTALLED_APPS, MIDDLEWARE and AUTHENTICATION_BACKENDS (settings.py)",
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned() -> list[str]:
    names = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(normalize(re.match(r"[A-Za-z0-9._-]+", line).group()))
    return names


def imported_top_level_names() -> set[str]:
    """Every top-level module the hub's code imports, anywhere in a module (functions included)."""
    names = set()
    for package in HUB_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def import_names_by_distribution() -> dict[str, set[str]]:
    by_dist: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            by_dist.setdefault(normalize(dist), set()).add(module)
    return by_dist


def test_every_pinned_distribution_is_imported_by_the_hub_or_loaded_by_name():
    imported = imported_top_level_names()
    provides = import_names_by_distribution()
    unused = []
    for dist in pinned():
        if dist in LOADED_BY_NAME:
            continue
        if dist not in provides:
            try:
                metadata.distribution(dist)
            except metadata.PackageNotFoundError:  # e.g. uvloop on Windows: cannot tell here
                continue
        if not provides.get(dist, set()) & imported:
            unused.append(dist)
    assert not unused, f"requirements.txt pins distributions the hub never imports: {unused}"


@pytest.mark.parametrize("dist", sorted(LOADED_BY_NAME))
def test_the_loaded_by_name_list_holds_only_pinned_distributions(dist):
    assert dist in pinned()
