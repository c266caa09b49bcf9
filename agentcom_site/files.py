"""Files only the hub's user may read (secret key, SQLite database, admin password), private from the start."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

PRIVATE = 0o600
# SQLite gives its -wal and -shm files the database file's own mode, so a private database keeps them private.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def _tighten(path: Path) -> None:
    """Make an existing file 0600 (files from older versions were 0644); leave others' files alone."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        info = path.stat()
        if info.st_mode & 0o077 and info.st_uid == os.getuid():
            path.chmod(PRIVATE)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, a file that is 0600 from the moment it exists (umask cannot widen it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(handle.fileno(), PRIVATE)  # an existing file keeps its old mode through O_CREAT
        handle.write(text)


def read_or_create_secret(path: Path) -> str:
    """The key in `path`, created 0600 on first use; two processes starting at once agree on one key."""
    if not path.exists():
        # Write a private temporary file, then link it into place: the link fails if another process
        # won the race, and no reader ever sees a partly written key.
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        write_private(temp, secrets.token_urlsafe(50))
        try:
            os.link(temp, path)
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    _tighten(path)
    return path.read_text().strip()


def private_sqlite(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (it would use 0644), and tighten existing ones."""
    if path.parent.is_dir():
        with contextlib.suppress(FileExistsError, PermissionError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE))
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in SQLITE_COMPANIONS)):
        _tighten(candidate)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)
