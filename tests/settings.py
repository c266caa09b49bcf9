"""Test settings: the real ones, with per-run isolation on the shared Redis and quick probes."""

from __future__ import annotations

import os
import uuid

# Set before the real settings are read, and inherited by the daphne/Celery processes the
# end-to-end tests start, so that a test run never shares queues or groups with a live hub.
os.environ.setdefault("AGENTCOM_CHANNEL_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
os.environ.setdefault("AGENTCOM_CELERY_QUEUE", os.environ["AGENTCOM_CHANNEL_PREFIX"])
os.environ.setdefault("AGENTCOM_NAMESPACE", os.environ["AGENTCOM_CHANNEL_PREFIX"])
os.environ.setdefault("PROBE_ON_REGISTER", "false")
os.environ.setdefault("PROBE_TIMEOUT_SECONDS", "1")
# Nothing a test registers may make a hub connect off this machine.
os.environ.setdefault("REGISTRY_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")
# Every report leaves a history row in tests (tests of sampling set their own interval).
os.environ.setdefault("RESOURCE_HISTORY_SECONDS", "0")

from agentcom_site.settings import *  # noqa: E402,F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Threads the tests start (consumers' database_sync_to_async, the publisher) must not keep
# connections open, or PostgreSQL refuses to drop the test database at the end.
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
