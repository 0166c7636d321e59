"""Where trials live: storage URLs, a tuned SQLite, and creating or resuming a study safely.

Everything a user can get wrong (a URL that does not parse, a missing folder, a file that is not a
database, a database of another tool or of a newer Optuna, a study name that holds another space)
is checked *before* anything is written, and reported as one line (:class:`UserError`).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, unquote_plus

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from study._errors import UserError
from study.space import Space, space_diff

__all__ = [
    "DEFAULT_STORAGE",
    "TrialEnd",
    "create_or_load_study",
    "count_stored_trials",
    "create_trials",
    "dashboard_url",
    "finish_trials",
    "MaskingArgumentParser",
    "mask_argv",
    "mask_secrets",
    "mask_text",
    "mask_url",
    "open_storage",
    "require_existing",
    "set_user_attrs",
    "sqlite_path",
    "stored_space",
    "trial_template",
    "use_wal",
]

DEFAULT_STORAGE = "sqlite:///studies.db"
# SQLite waits this long for a lock held by another process before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 60.0
_SQLITE_MAGIC = b"SQLite format 3\x00"


# A query parameter whose key (percent-decoded, any case) holds one of these is a secret; so is
# one whose decoded value holds "KEY=" or "KEY:" with such a key (a whole DSN in one parameter).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
_SECRET_PAIR = re.compile(r"(?:pass|pwd|secret|token)[^=:&;\s]*\s*[=:]", re.IGNORECASE)
# scheme://user:PASSWORD@ (the colon may be written %3A, the // left out). The password runs to
# the *last* "@": an unescaped "@", "/" or "?" in it makes SQLAlchemy send part of it as the host.
_USERINFO = re.compile(
    r"^(?P<head>[^:/?#@\s]*:(?://)?(?:[^:/?#@%]|%(?!3[aA]))*(?::|%3[aA]))(?P<password>.*)@",
    re.DOTALL,
)
_PARAM_SEPARATORS = re.compile(r"([&;\s]+)")


def _url_pieces(url: str) -> list[tuple[str, bool]]:
    """``url`` cut into pieces that join back to it, each marked True where it is a secret."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    if m := _USERINFO.match(url):
        pieces += [(m["head"], False), (m["password"], True)]
        pos = m.end("password")
    q = url.find("?", pos)
    if "://" not in url:  # not a URL: key=value pairs (a DSN), if anything
        params_at = pos
    else:
        params_at = len(url) if q < 0 else q + 1
    pieces.append((url[pos:params_at], False))
    for part in _PARAM_SEPARATORS.split(url[params_at:]):
        key, eq, value = part.partition("=")
        if eq and (
            _SECRET_KEY.search(unquote_plus(key)) or _SECRET_PAIR.search(unquote_plus(value))
        ):
            pieces += [(key + eq, False), (value, True)]
        else:
            pieces.append((part, False))
    return pieces


def mask_url(url: str) -> str:
    """The URL with every secret in it replaced by ``***``: safe to print or store.

    Masks the password of ``user:password@`` (the colon may be written ``%3A``) and the value of
    every query parameter whose key, percent-decoded and in any case, holds ``pass``, ``pwd``,
    ``secret`` or ``token`` (``password=``, ``sslpassword=``, ``%70asswd=``, ...), or whose
    decoded value holds such a ``key=``. Needs no parse: a URL SQLAlchemy refuses is masked too,
    and so is ``--storage=URL`` whole (the flag is kept). Text without ``://`` is read as
    ``key=value`` pairs. Everything else is kept as written.
    """
    return "".join("***" if secret else piece for piece, secret in _url_pieces(url))


def mask_argv(argv: Sequence[str]) -> list[str]:
    """Command-line arguments with every secret masked (:func:`mask_url` of each): however the
    flag before a URL is spelled (``--storage URL``, ``--storage=URL``, ``--stor=URL``,
    ``--compare-storage URL``)."""
    return [mask_url(a) for a in argv]


def mask_text(text: str) -> str:
    """Free text (a stored command line, an argparse message) with the secrets of every URL in
    it masked: :func:`mask_url` of each whitespace-separated word."""
    return "".join(mask_url(word) for word in re.split(r"(\s+)", text))


def mask_secrets(text: str, url: str) -> str:
    """``text`` (a driver's error message) with each secret of ``url`` replaced by ``***``, as
    written in the URL and percent-decoded, and the secrets of any URL in it masked."""
    secrets = {piece for piece, secret in _url_pieces(url) if secret and piece}
    forms = {f for s in secrets for f in (s, unquote(s), unquote_plus(s)) if f}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return mask_text(text)


class MaskingArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose error messages mask URLs: argparse echoes a mistyped or
    ambiguous ``--st=URL`` whole ("ambiguous option: --st=postgresql://u:pw@...")."""

    def error(self, message: str) -> NoReturn:
        super().error(mask_text(message))


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other backends or in-memory SQLite."""
    u = sqlalchemy.engine.make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database)


def require_existing(url: str) -> Path | None:
    """For readers (report, dashboard): the URL parses and a SQLite file already exists.

    Returns:
        The SQLite file, or None for other backends.

    Raises:
        UserError: the URL does not parse, or its SQLite file is missing (a reader must not
            create an empty database).
    """
    try:
        path = sqlite_path(url)
    except Exception:
        raise UserError(f"storage URL {mask_url(url)!r} does not parse") from None
    if path is not None and not path.is_file():
        raise UserError(f"storage {mask_url(url)}: no such database file {path}")
    return path


def dashboard_url(url: str) -> str:
    """The URL to give ``optuna-dashboard``: absolute for SQLite, masked for servers."""
    path = sqlite_path(url)
    return f"sqlite:///{path.resolve()}" if path is not None else mask_url(url)


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
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if not head:
        return False  # an empty file is an empty database
    if head != _SQLITE_MAGIC:
        raise UserError(f"storage {shown}: {path} is not a SQLite database")
    try:
        con = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            revision = None
            if "alembic_version" in tables:
                row = con.execute("SELECT version_num FROM alembic_version").fetchone()
                revision = row[0] if row else None
            # Every page read once: a damaged page found later fails a write with a traceback.
            damage = con.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            con.close()
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
                return RDBStorage(url, **kwargs)
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


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Set several user attributes of a running trial (Optuna's ``set_user_attr``, each)."""
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


@dataclass(frozen=True)
class TrialEnd:
    """How a running trial ends: COMPLETE with ``value``, or PRUNED (its value is then its last
    reported one, as Optuna's ``tell`` gives it), with the user attrs stored alongside."""

    trial: optuna.Trial
    state: TrialState
    value: float | None
    user_attrs: dict[str, Any]


def finish_trials(study: optuna.Study, ends: Sequence[TrialEnd]) -> set[int]:
    """Store how running trials end: each one's user attrs, then its state and value
    (``study.tell``). A reader never sees a finished trial without its attrs: they are written
    while it still runs.

    Returns:
        The ids of the trials found finished meanwhile (failed by another process whose stale
        check saw their heartbeat late; their retry runs in their place): left as they are.
    """
    lost: set[int] = set()
    for e in ends:
        try:
            set_user_attrs(e.trial, e.user_attrs)
            study.tell(e.trial, e.value if e.state == TrialState.COMPLETE else None, state=e.state)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            # Optuna raises these for a trial finished meanwhile; anything else goes on up.
            if not study._storage.get_trial(e.trial._trial_id).state.is_finished():
                raise
            lost.add(e.trial._trial_id)
    return lost


def trial_template(
    params: dict[str, Any],
    distributions: dict[str, BaseDistribution],
    system_attrs: dict[str, Any],
    number: int = -1,
) -> optuna.trial.FrozenTrial:
    """A RUNNING trial to be created (:func:`create_trials`), started now. Its id, and its number
    (``number`` is the one it is expected to get), are given when it is created."""
    return optuna.trial.FrozenTrial(
        number=number,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params=params,
        distributions=distributions,
        user_attrs={},
        system_attrs=system_attrs,
        intermediate_values={},
        trial_id=-1,
    )


def create_trials(study: optuna.Study, templates: Sequence[optuna.trial.FrozenTrial]) -> list[int]:
    """Create RUNNING trials from ``templates`` (their params, distributions and system attrs),
    each in one call of Optuna's ``create_new_trial``; their ids."""
    storage, study_id = study._storage, study._study_id
    return [storage.create_new_trial(study_id, template_trial=t) for t in templates]


# How long a run waits for the space of a study found without one (and without trials): a
# process creating it stores the space milliseconds after the study. Past this, the study was
# left half-made (its creator was killed in between) and the run finishes making it.
CREATION_WAIT_S = 5.0


def _wait_for_space(storage: RDBStorage, study_name: str) -> Any:
    """A study another worker has just created gets its space a moment later: wait for it."""
    study_id = storage.get_study_id_from_name(study_name)
    deadline = time.monotonic() + CREATION_WAIT_S
    while time.monotonic() < deadline:
        space = storage.get_study_user_attrs(study_id).get("space")
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
    space = storage.get_study_user_attrs(study_id).get("space")
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
        stored = storage.get_study_user_attrs(study_id).get("space")
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
    study.set_user_attr("space_fingerprint", space.fingerprint())
    for key, value in metadata.items():
        study.set_user_attr(key, value)
    study.set_user_attr("space", space.to_dict())
