"""Turn committed registry changes into coalesced events on the channel layer group.

Every process that changes state (daphne, each Celery worker, a management command) owns one
Publisher. Receivers only add ids to it; a background thread sends at most
PUBLISH_MAX_EVENTS_PER_SECOND events per process, each carrying full rows for everything
that changed since the last one. Coalescing here, before Redis, matters: every group_send is
one message per connected dashboard into daphne, and one daphne saturates at a few thousand
messages per second (see shared/MEASURED.md). The consumer coalesces again per browser.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection

from registry import metrics, services

logger = logging.getLogger(__name__)

GROUP = "llm_registry"
IDLE_CLOSE_SECONDS = 2.0
RETRY_MIN_SECONDS = 0.2  # a failed publish is tried again after this, doubling up to RETRY_MAX_SECONDS
RETRY_MAX_SECONDS = 5.0
EVENT_TYPE = "registry.changed"  # handled by DashboardConsumer.registry_changed


class Publisher:
    """Collect changed ids from any thread; publish them in batches from one thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.changed: set[int] = set()
        self.removed: set[int] = set()
        self.hosts: set[str] = set()
        self.checked: dict[int, str] = {}  # endpoint id -> when it was last probed
        self.sending = threading.Lock()  # held for a whole flush, so exit waits for one in flight
        self.thread: threading.Thread | None = None
        self.last_flush = 0.0
        self.retry_delay = 0.0  # > 0 while publishing fails: the wait before the next try
        self.loop: asyncio.AbstractEventLoop | None = None

    def reset_after_fork(self) -> None:
        """A forked child (Celery prefork) starts with its own state, thread and loop."""
        self.__init__()

    def discard(self) -> None:
        """Forget everything pending (the test suite, before it drops its database)."""
        with self.lock:
            self._take()

    def add(self, *, changed=(), removed=(), hosts=(), checked=None) -> None:
        with self.lock:
            self.changed.update(changed)
            self.removed.update(removed)
            self.hosts.update(hosts)
            self.checked.update(checked or {})
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, name="registry-publisher", daemon=True)
                self.thread.start()
            self.wake.notify()

    def _take(self) -> tuple[set[int], set[int], set[str], dict[int, str]]:
        checked = {i: at for i, at in self.checked.items() if i not in self.removed}
        batch = (self.changed - self.removed, self.removed, self.hosts, checked)
        self.changed, self.removed, self.hosts, self.checked = set(), set(), set(), {}
        return batch

    def _pending(self) -> bool:
        return bool(self.changed or self.removed or self.hosts or self.checked)

    def _run(self) -> None:
        interval = 1.0 / settings.PUBLISH_MAX_EVENTS_PER_SECOND
        while True:
            with self.lock:
                if not self._pending() and not self.wake.wait_for(self._pending, timeout=IDLE_CLOSE_SECONDS):
                    # Idle: give the database connection back (tests drop their database; a busy
                    # publisher keeps it, so a burst does not reconnect on every flush).
                    connection.close()
                    self.wake.wait_for(self._pending)
            # Leading edge: an isolated change goes out at once; a burst waits out the interval.
            time.sleep(max(0.0, self.last_flush + max(interval, self.retry_delay) - time.monotonic()))
            self.flush()

    def flush(self) -> None:
        """Publish everything pending now (also called at exit)."""
        with self.sending:
            with self.lock:
                changed, removed, hosts, checked = self._take()
            if not (changed or removed or hosts or checked):
                return
            self.last_flush = time.monotonic()
            try:
                self._send(build_event(changed, removed, hosts, checked))
            except Exception:  # a database or Redis hiccup must not kill the publisher thread
                first = not self.retry_delay  # one traceback per outage, not one per try
                self.retry_delay = min(RETRY_MAX_SECONDS, max(RETRY_MIN_SECONDS, 2 * self.retry_delay))
                logger.warning(
                    "could not publish a registry event; retrying in %.1f s", self.retry_delay, exc_info=first
                )
                connection.close()
                self._drop_loop()
                self._put_back(changed, removed, hosts, checked)
            else:
                metrics.events_published()
                if self.retry_delay:
                    logger.warning("published the registry events held back while publishing failed")
                self.retry_delay = 0.0
            if not connection.settings_dict.get("CONN_MAX_AGE"):
                connection.close()  # no persistent connections wanted (the tests)

    def _put_back(self, changed: set[int], removed: set[int], hosts: set[str], checked: dict[int, str]) -> None:
        """Return a batch that could not be published to the pending ones (never lose an id)."""
        with self.lock:
            self.changed |= changed
            self.removed |= removed
            self.hosts |= hosts
            self.checked = {**checked, **self.checked}  # a newer probe time wins
            self.wake.notify()

    def _drop_loop(self) -> None:
        """Forget the loop and with it the layer's pool for it: the next try connects afresh
        (after a Redis restart the pooled connections are dead)."""
        loop, self.loop = self.loop, None
        if loop is not None:
            try:
                loop.close()  # channels-redis closes this loop's connections as the loop closes
            except Exception:
                logger.debug("closing the publisher's event loop failed", exc_info=True)

    def _send(self, data: dict) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        if self.loop is None:
            # One loop for all sends: channels-redis keeps its connection pool per event loop,
            # so a fresh loop per send (what async_to_sync does in a plain thread) reconnects.
            self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(layer.group_send(GROUP, {"type": EVENT_TYPE, "data": data}))


def build_event(changed: set[int], removed: set[int], hosts: set[str], checked: dict[int, str]) -> dict:
    """The event payload: full rows for changed endpoints, removed ids, hosts' resources,
    and when unchanged endpoints were last probed (so "Last Checked" stays true)."""
    # String keys: the channel layer's msgpack refuses integer map keys.
    data: dict = {"checked": {str(i): at for i, at in checked.items()}} if checked else {}
    if changed or removed:
        rows = services.endpoint_rows(changed) if changed else []
        gone = changed - {row["id"] for row in rows}
        held, loaded = services.fleet_summary()
        data.update(endpoints=rows, removed=sorted(removed | gone), fleet_models=held, fleet_loaded=loaded)
    if hosts:
        data["resources"] = services.host_resources(hosts)
    return data


publisher = Publisher()
atexit.register(publisher.flush)
os.register_at_fork(after_in_child=publisher.reset_after_fork)
