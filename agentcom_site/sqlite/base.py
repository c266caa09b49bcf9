"""SQLite with writers queued by the kernel instead of by SQLite's busy handler.

SQLite lets one writer in at a time; the others retry inside its busy handler, which sleeps
1, 2, 5, ... up to 100 ms between attempts. With several writers (the report writer in daphne,
probe batches in the Celery worker's threads) a waiting writer sleeps through many short
transactions of the others and can wait a second for a lock held a few milliseconds at a time.

Here every transaction first takes an exclusive `flock` on a file beside the database (blocking
in the kernel, woken the moment it is released, in any process), then BEGIN IMMEDIATE, and lets
go after COMMIT or ROLLBACK. Readers take nothing: in WAL mode they never wait.
"""

from __future__ import annotations

import os

try:
    import fcntl
except ImportError:  # Windows: SQLite's own busy handler only
    fcntl = None

from django.db.backends.sqlite3 import base


class DatabaseWrapper(base.DatabaseWrapper):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._write_lock: int | None = None  # fd of the lock file, held during a transaction

    def _lock_path(self) -> str | None:
        name = str(self.settings_dict["NAME"])
        if fcntl is None or not name or name == ":memory:" or name.startswith("file:"):
            return None
        return name + ".writer-lock"

    def _start_transaction_under_autocommit(self):
        path = self._lock_path()
        if path is not None and self._write_lock is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._write_lock = fd
        try:
            super()._start_transaction_under_autocommit()
        except BaseException:
            self._release_write_lock()
            raise

    def _release_write_lock(self) -> None:
        if self._write_lock is not None:
            fd, self._write_lock = self._write_lock, None
            os.close(fd)  # closing the descriptor releases the flock

    def _commit(self):
        try:
            return super()._commit()
        finally:
            self._release_write_lock()

    def _rollback(self):
        try:
            return super()._rollback()
        finally:
            self._release_write_lock()

    def _close(self):
        try:
            return super()._close()
        finally:
            self._release_write_lock()
