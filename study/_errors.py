"""Errors a user can cause: each ends the command with one line and exit status 2."""

from __future__ import annotations

import errno
import sqlite3


class UserError(Exception):
    """A mistake in the input (a space file, a storage URL, a study name), not a bug.

    The command line prints ``error: <message>`` on one line, exits with status 2 and shows no
    traceback. The message names the file or the option, the field, and what is allowed.
    """


class SpaceError(UserError):
    """A search space file that cannot be used."""


# A worker process that found its storage full exits with this status (ENOSPC's number), so
# that the run says so once instead of reporting a failed worker.
STORAGE_FULL_STATUS = errno.ENOSPC
# PostgreSQL's SQLSTATE for "disk full".
_PG_DISK_FULL = "53100"


class StorageFull(Exception):
    """The storage has no room left: a worker found it so (see ``STORAGE_FULL_STATUS``)."""


def is_storage_full(error: BaseException) -> bool:
    """Whether ``error`` or an error it was raised from is a full disk or database.

    Optuna wraps SQLAlchemy's error, which wraps the driver's: SQLite's SQLITE_FULL
    ("database or disk is full"), PostgreSQL's disk_full, or the OS's ENOSPC.
    """
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, StorageFull):
            return True
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if getattr(e, "sqlstate", None) == _PG_DISK_FULL or getattr(e, "pgcode", None) == (
            _PG_DISK_FULL
        ):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]
    return False
