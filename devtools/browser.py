"""Headless Chromium as the browser tests and bench/page_scale.py start it (Debian's chromium)."""

from __future__ import annotations

import shutil

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# This machine has no network but loopback: without these flags Chromium keeps trying to reach
# Google's services at start and in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
