"""The Celery app: broker from REDIS_URL; the beat schedule lives in settings (CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import logging
import os
import threading

from celery import Celery, bootsteps
from celery.beat import EmbeddedService
from click import Option

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentcom_site.settings")

app = Celery("agentcom")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class ThreadedBeat(bootsteps.StartStopStep):
    """`worker --beat-thread`: run beat as a thread of this worker (the one-machine default).

    Celery's own `-B` forks a second process that holds a copy of the worker (~90 MiB here) to
    send a few messages a minute. Like `-B`, only one worker of a deployment may do this; at
    scale, run one `celery beat` and workers without this flag.
    """

    label = "Beat (thread)"

    def __init__(self, worker, beat_thread: bool = False, **options):
        self.enabled = bool(beat_thread)
        super().__init__(worker, **options)

    def create(self, worker):
        return EmbeddedService(worker.app, thread=True, schedule_filename=worker.schedule_filename)


app.user_options["worker"].add(
    Option(["--beat-thread"], is_flag=True, default=False, help="Run beat as a thread of this worker.")
)
app.steps["worker"].add(ThreadedBeat)


# A live worker keeps this key alive in Redis; /readyz reads it (one GET, no round trip to a worker).
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_SECONDS = 6

logger = logging.getLogger(__name__)


class Heartbeat(bootsteps.StartStopStep):
    """Refresh `<namespace>:worker-alive` every HEARTBEAT_SECONDS, expiring after HEARTBEAT_TTL_SECONDS.

    A killed worker stops refreshing it, so /readyz says "worker: down" within the expiry.
    """

    label = "Heartbeat (readyz)"

    def __init__(self, worker, **options):
        self.stopped = threading.Event()
        self.thread = None
        super().__init__(worker, **options)

    def start(self, worker):
        self.stopped.clear()
        self.thread = threading.Thread(target=self._beat, args=(worker.hostname,), name="heartbeat", daemon=True)
        self.thread.start()

    def stop(self, worker):
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=HEARTBEAT_SECONDS + 1)
        with _redis() as client:
            try:
                client.delete(_heartbeat_key())
            except Exception:  # shutting down; the key expires by itself
                pass

    terminate = stop

    def _beat(self, hostname: str) -> None:
        key = _heartbeat_key()
        with _redis() as client:
            while not self.stopped.is_set():
                try:
                    client.set(key, hostname, ex=HEARTBEAT_TTL_SECONDS)
                except Exception as exc:  # Redis away: keep trying; readyz reports Redis meanwhile
                    logger.warning("worker heartbeat failed: %s", exc.__class__.__name__)
                self.stopped.wait(HEARTBEAT_SECONDS)


def _heartbeat_key() -> str:
    from django.conf import settings

    from agentcom_site.namespace import worker_heartbeat_key

    return worker_heartbeat_key(settings.AGENTCOM_NAMESPACE)


def _redis():
    import redis
    from django.conf import settings

    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)


app.steps["worker"].add(Heartbeat)
