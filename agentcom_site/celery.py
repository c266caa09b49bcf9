"""The Celery app: broker from REDIS_URL; the beat schedule lives in settings (CELERY_BEAT_SCHEDULE)."""

from __future__ import annotations

import os

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
