"""Where trials live: opening a storage (a tuned SQLite, or a server), and creating or resuming
a study safely.

Everything a user can get wrong (a URL that does not parse, a missing folder, a file that is not a
database, a database of another tool or of a newer Optuna, a study name that holds another space)
is checked *before* anything is written, and reported as one line (:class:`UserError`).
"""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from study._errors import UserError
from study.names import METRIC, SPACE, SPACE_FINGERPRINT
from study.space import Space, space_diff
from study.urls import mask_secrets, mask_url, sqlite_path

__all__ = [
    "DEFAULT_STORAGE",
    "create_or_load_study",
    "count_stored_trials",
    "open_storage",
    "stored_space",
    "use_wal",
]

DEFAULT_STORAGE = "sqlite:///studies.db"
_SQLITE_MAGIC = b"SQLite format 3\x00"
# SQLite files this process has opened as a storage (see _check_sqlite_file).
_OPENED: set[Path] = set()
# SQLite waits this long for a lock held by another process before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 60.0


def _optuna_schema() -> tuple[str, set[str]]:
    """Optuna's own schema revision (its head) and every revision it knows; read from a storage
    in memory, so the file being checked is not opened for it."""
    memory = RDBStorage("sqlite:///:memory:", skip_compatibility_check=True)
    try:
        return memory.get_head_version(), set(memory.get_all_versions())
    finally:
        memory.engine.dispose()


def _check_sqlite_file(path: Path, shown: str) -> bool:
    """Read-only checks of a SQLite storage file; raises UserError, never writes.

    Returns:
        True when the file holds Optuna's tables at the schema of the installed Optuna (Optuna's
        own check of it, which loads its alembic scripts a second time, can be skipped).
    """
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"storage {shown}: folder {folder} does not exist (create it first)")
    if not path.exists():
        if not os.access(folder, os.W_OK):
            raise UserError(f"storage {shown}: folder {folder} is not writable")
        return False
    if not path.is_file():
        raise UserError(f"storage {shown}: {path} is not a file")
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(folder, os.W_OK):
        raise UserError(f"storage {shown}: {path} or its folder is read-only")
    if path.stat().st_size == 0:
        return False  # an empty file is an empty database
    # The header is read with open() only in a process that has not opened this storage yet:
    # closing a file this process opened drops every POSIX lock the process holds on it, those
    # of its open SQLite connections too (a notebook's earlier run), and SQLite then misreads
    # the write-ahead log ("unable to get the page. error code=522" on the next run in the
    # same process; tests/test_gpt.py's --twin, run twice in one process, showed it each time).
    if path.resolve() not in _OPENED:
        with open(path, "rb") as f:
            if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise UserError(f"storage {shown}: {path} is not a SQLite database")
    # Read-only first. A read-only connection can fail to read a page that another process's
    # connection holds in the write-ahead log ("unable to get the page. error code=522", seen
    # in a test that held the study open while a run started): then once more, read-write,
    # as every connection of a run opens it (still nothing is written).
    for mode in ("?mode=ro", ""):
        try:
            con = sqlite3.connect(f"file:{path.resolve()}{mode}", uri=True, timeout=10)
            try:
                tables = {
                    r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                revision = None
                if "alembic_version" in tables:
                    row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                    revision = row[0] if row else None
                # Every page read once: a damaged page found later fails a write with a
                # traceback.
                damage = con.execute("PRAGMA quick_check(1)").fetchone()[0]
            finally:
                con.close()
            break
        except sqlite3.DatabaseError as e:
            damage = str(e)
    if damage != "ok":
        first = damage.replace("*** in database main ***", "").strip().splitlines()[0]
        raise UserError(
            f"storage {shown}: {path} is not a readable SQLite database ({first}); use a new "
            f"file, or recover what it holds with `sqlite3 {path} .recover`"
        )
    if tables and not {"studies", "version_info"} <= tables:
        some = ", ".join(sorted(tables)[:5])
        raise UserError(
            f"storage {shown}: {path} is a database of another tool (tables: {some}); "
            "use a new file"
        )
    if revision is not None:
        head, known = _optuna_schema()
        if revision not in known:
            raise UserError(
                f"storage {shown}: schema {revision} was written by a newer Optuna than "
                f"{optuna.__version__}; upgrade optuna to use it"
            )
        if revision != head:
            raise UserError(
                f"storage {shown}: schema {revision} is from an older Optuna; upgrade it with "
                f"`optuna storage upgrade --storage {shown}`"
            )
        return True
    return False


def _sqlite_creator(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections with a busy timeout and synchronous=NORMAL (see :func:`use_wal`)."""
    resolved = str(path.resolve())

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(resolved, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False)
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    return connect


def use_wal(storage: RDBStorage) -> None:
    """Put a SQLite storage in WAL mode (kept in the file); a no-op for other backends.

    WAL lets readers (optuna-dashboard) run beside a writer, and with synchronous=NORMAL a
    commit needs no fsync: a trial.report costs well under a millisecond instead of 2-20 ms. A
    process crash loses nothing; an OS crash or power loss may lose the last commits, never the
    database's consistency. Called only once the study is validated: the switch rewrites the
    file's header, and a refused run must leave the database byte-for-byte as it was.
    """
    if storage.engine.dialect.name != "sqlite":
        return
    with storage.engine.connect() as con:
        con.exec_driver_sql("PRAGMA journal_mode=WAL")


def open_storage(url: str, heartbeat_s: int | None = 10, validated: bool = False) -> RDBStorage:
    """Open an RDB storage after checking the URL; the heartbeat fails and retries dead trials.

    Args:
        url: any SQLAlchemy URL (``sqlite:///studies.db``, ``postgresql+psycopg://...``).
        heartbeat_s: seconds between a running trial's heartbeats; a trial whose heartbeat is
            older than 3x this is failed and queued again (up to 3 retries). None disables it.
        validated: the run that started this process opened the same URL and checked it a
            moment ago (a worker): the file checks, Optuna's table creation and its schema check
            are skipped (0.03-0.11 s of a forked worker's start, measured on the AMD machine).

    Raises:
        UserError: the URL does not parse, or the database cannot be used (nothing written).
    """
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise UserError(
            f"storage URL {mask_url(url)!r} does not parse; expected e.g. sqlite:///studies.db or "
            "postgresql+psycopg://user:password@host/dbname"
        ) from None
    shown = mask_url(url)
    kwargs: dict[str, Any] = {}
    path = sqlite_path(url)
    if validated:
        kwargs.update(skip_table_creation=True, skip_compatibility_check=True)
    if path is not None:
        # A file at Optuna's schema, as checked here, needs no second check by Optuna.
        if not validated and _check_sqlite_file(path, shown):
            kwargs["skip_compatibility_check"] = True
        kwargs["engine_kwargs"] = {"creator": _sqlite_creator(path)}
    elif parsed.get_backend_name() != "sqlite":
        try:
            parsed.get_dialect()
        except Exception as e:
            raise UserError(
                f"storage {shown}: unsupported backend or driver ({mask_secrets(str(e), url)})"
            ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_s is not None:
            kwargs.update(
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = RDBStorage(url, **kwargs)
            if path is not None:
                _OPENED.add(path.resolve())
            return storage
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Several workers creating the tables of a fresh database at once collide
            # (optuna#4621); the tables exist by the next attempt.
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
        except sqlalchemy.exc.SQLAlchemyError as e:
            first = str(e.orig if getattr(e, "orig", None) else e).strip().splitlines()[0]
            if "already exists" in first and attempt < 4:  # the same race on SQLite
                time.sleep(0.2 * (attempt + 1))
                continue
            raise UserError(f"storage {shown}: cannot open: {mask_secrets(first, url)}") from None
        except RuntimeError as e:  # Optuna's schema-compatibility error
            first = mask_secrets(str(e).splitlines()[0], url)
            raise UserError(f"storage {shown}: {first}") from None
    raise AssertionError("unreachable")


# How long a run waits for the space of a study found without one (and without trials): a
# process creating it stores the space milliseconds after the study. Past this, the study was
# left half-made (its creator was killed in between) and the run finishes making it.
CREATION_WAIT_S = 5.0


def _wait_for_space(storage: RDBStorage, study_name: str) -> Any:
    """A study another worker has just created gets its space a moment later: wait for it."""
    study_id = storage.get_study_id_from_name(study_name)
    deadline = time.monotonic() + CREATION_WAIT_S
    while time.monotonic() < deadline:
        space = storage.get_study_user_attrs(study_id).get(SPACE)
        if space is not None:
            return space
        time.sleep(0.2)
    return None


def count_stored_trials(storage: optuna.storages.BaseStorage, study_id: int) -> int:
    """How many trials the study holds, in every state."""
    return storage.get_n_trials(study_id)


def stored_space(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, Any] | None:
    """The space a study of this tool stored, or None (no such study, or not made here)."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return None
    space = storage.get_study_user_attrs(study_id).get(SPACE)
    return space if isinstance(space, dict) else None


def create_or_load_study(
    storage: RDBStorage,
    study_name: str,
    space: Space,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    metadata: dict[str, Any],
) -> tuple[optuna.Study, bool]:
    """Create the study with its space and metadata, or load it if it holds the same space; a
    study left without space and trials (its creator was killed) is finished here.

    Returns:
        The study and whether it was created now.

    Raises:
        UserError: the study exists but holds a different space (the message names the fields
            that differ), or it was not made by this tool. Nothing is written then.
    """
    try:
        study_id: int | None = storage.get_study_id_from_name(study_name)
    except KeyError:
        study_id = None
    if study_id is not None:
        # Its trials are counted before its attrs are read: a study made by this tool holds its
        # space before its first trial, so a study found with trials and without a space was
        # not made here, and one found with neither is being made by another process (wait) or
        # was left half-made by a run killed while making it (finish it).
        # (optuna.get_all_study_summaries reads the other way round, and every study's trials
        # in between: on a PostgreSQL database holding many studies a process starting beside
        # the creator took a new study for a foreign one.)
        directions = [d.name.lower() for d in storage.get_study_directions(study_id)]
        if directions != ["minimize"]:
            raise UserError(
                f"study {study_name!r} optimizes {' and '.join(directions)} (not made by this "
                "tool, which minimizes the validation loss); choose another --study-name"
            )
        n_trials = count_stored_trials(storage, study_id)
        stored = storage.get_study_user_attrs(study_id).get(SPACE)
        if stored is None and n_trials == 0:
            stored = _wait_for_space(storage, study_name)
            if stored is None:
                # Left half-made by a run stopped while creating it (or made empty by another
                # tool): nothing in it to lose, so this run finishes making it.
                study = optuna.load_study(
                    study_name=study_name, storage=storage, sampler=sampler, pruner=pruner
                )
                use_wal(storage)
                _store_space(study, space, metadata)
                return study, True
        if stored is None:
            raise UserError(
                f"study {study_name!r} holds no search space (not made by this tool); "
                "choose another --study-name"
            )
        differ = space_diff(stored, space.to_dict())
        if differ:
            raise UserError(
                f"study {study_name!r} holds another space (differs in: {', '.join(differ)}); "
                "leave out --space to run it on its own space, or choose a new --study-name"
            )
        study = optuna.load_study(
            study_name=study_name, storage=storage, sampler=sampler, pruner=pruner
        )
        use_wal(storage)
        return study, False
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction="minimize",
        )
    except optuna.exceptions.DuplicatedStudyError:
        # Another process created it between our look and our write: load it and check it.
        return create_or_load_study(storage, study_name, space, sampler, pruner, metadata)
    use_wal(storage)
    _store_space(study, space, metadata)
    return study, True


def _store_space(study: optuna.Study, space: Space, metadata: dict[str, Any]) -> None:
    """The study's space, its fingerprint and the run's metadata, as its user attrs. The space
    comes last: a study holds it only once everything else is stored."""
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2: a user has no use for it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC])  # what optuna-dashboard names the value ("Objective 0")
    study.set_user_attr(SPACE_FINGERPRINT, space.fingerprint())
    for key, value in metadata.items():
        study.set_user_attr(key, value)
    study.set_user_attr(SPACE, space.to_dict())
