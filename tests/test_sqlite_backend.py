"""The SQLite backend queues writers on a lock file: a transaction that ends (commit, rollback,
error) lets the next writer in at once, and readers never wait."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections, transaction

from registry.models import Host

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _sqlite_only():
    if connection.vendor != "sqlite":
        pytest.skip("the writer lock belongs to the SQLite backend")


def write_in_thread(name: str, started: threading.Event | None = None) -> float:
    """Insert a host from another thread (its own connection); return how long it took."""
    took = []

    def run():
        begin = time.monotonic()
        with transaction.atomic():
            Host.objects.create(name=name)
        took.append(time.monotonic() - begin)
        connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    if started:
        started.set()
    thread.join(10)
    return took[0]


def test_a_writer_waits_for_the_transaction_in_progress_and_then_goes_in():
    with transaction.atomic():
        Host.objects.create(name="first")
        other = threading.Thread(target=write_in_thread, args=("second",))
        other.start()
        other.join(0.3)
        assert other.is_alive()  # queued behind our transaction
        assert list(Host.objects.values_list("name", flat=True)) == ["first"]
    other.join(5)
    assert not other.is_alive()
    assert set(Host.objects.values_list("name", flat=True)) == {"first", "second"}


def test_a_rolled_back_or_failed_transaction_lets_the_next_writer_in():
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        Host.objects.create(name="gone")
        raise ZeroDivisionError
    assert write_in_thread("next") < 2
    assert list(Host.objects.values_list("name", flat=True)) == ["next"]


def test_readers_do_not_wait_for_a_writer():
    Host.objects.create(name="seen")
    holder_in, release = threading.Event(), threading.Event()

    def hold():
        with transaction.atomic():
            Host.objects.create(name="pending")
            holder_in.set()
            release.wait(5)
        connections.close_all()

    thread = threading.Thread(target=hold)
    thread.start()
    holder_in.wait(5)
    begin = time.monotonic()
    names = list(Host.objects.values_list("name", flat=True))
    assert names == ["seen"] and time.monotonic() - begin < 1
    release.set()
    thread.join(5)
