"""What Optuna's public API does not give, or gets wrong under concurrency: the one module of
the tool that touches Optuna's private names and tables.

1. **Claiming a queued or a stale trial exactly once.** Optuna's ``ask`` pops a queued (WAITING)
   trial, and its stale check fails a RUNNING one, by reading the state and then writing it.
   SQLite has no row locks, so two processes can both take the same queued trial and both train
   it, or both fail the same stale trial and both queue a retry (a study then holds more trials
   than its target). Shown by ``test_a_queued_trial_is_taken_by_one_process_only`` in
   tests/test_workers.py (four processes asking at once took one queued trial twice in 3 of 15
   rounds without the fix) and the soak test. Fixed here by one conditional
   ``UPDATE ... WHERE state = ...``, which exactly one process wins. Still to be reported
   upstream.
2. **A heartbeat for ask-and-tell trials.** Optuna sends heartbeats only inside
   ``study.optimize``; the tool asks and tells, so it runs Optuna's own heartbeat thread
   (``optuna.storages._heartbeat``) and reads the stale trials as Optuna's check does.
3. **Trials killed before their first heartbeat.** Optuna's stale check skips a RUNNING trial
   with no heartbeat at all, which then stays RUNNING forever; such a trial older than the grace
   period is stale too (``test_a_trial_killed_before_its_first_heartbeat_is_failed_and_retried``
   in tests/test_workers.py).

Everything else goes through Optuna's public storage and study API.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

__all__ = [
    "claim_stale_trial",
    "claim_waiting_trial",
    "heartbeat",
    "heartbeat_enabled",
    "stale_trial_ids",
]


def _rdb(storage: Any) -> RDBStorage | None:
    """The RDB storage behind Optuna's cache wrapper, if it is one."""
    rdb = getattr(storage, "_backend", storage)
    return rdb if isinstance(rdb, RDBStorage) else None


def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    return is_heartbeat_enabled(storage)


def heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> AbstractContextManager[Any]:
    """Optuna's heartbeat thread for a running trial, as ``study.optimize`` runs it (a no-op on
    a storage without heartbeat)."""
    return get_heartbeat_thread(trial_id, storage)


def stale_trial_ids(study: optuna.Study) -> list[int]:
    """RUNNING trials whose process died: a heartbeat older than the grace period (Optuna's own
    check), or none at all and started longer ago than that (a process killed before its first
    heartbeat, which Optuna's check skips)."""
    storage = study._storage
    rdb = _rdb(storage)
    if rdb is None or rdb.heartbeat_interval is None:
        return []
    from optuna.storages._rdb import models

    grace = timedelta(seconds=rdb.grace_period or 2 * rdb.heartbeat_interval)
    session = rdb.scoped_session()
    try:
        rows = (
            session.query(models.TrialModel)
            .filter(models.TrialModel.study_id == study._study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(~models.TrialModel.heartbeats.any())
            .all()
        )
        now = datetime.now()
        silent = [r.trial_id for r in rows if r.datetime_start and now - r.datetime_start > grace]
    finally:
        session.close()
        rdb.scoped_session.remove()
    return storage._get_stale_trial_ids(study._study_id) + silent


def claim_waiting_trial(study: optuna.Study, trial_id: int) -> bool:
    """Start a queued (WAITING) trial; True only for the one process that did (see 1. above)."""
    return _set_state_if(study, trial_id, TrialState.WAITING)


def claim_stale_trial(study: optuna.Study, trial_id: int) -> bool:
    """Fail a RUNNING trial; True only for the one process that did (see 1. above)."""
    return _set_state_if(study, trial_id, TrialState.RUNNING)


def _set_state_if(study: optuna.Study, trial_id: int, expected: TrialState) -> bool:
    """Move a trial from ``expected`` to the next state (WAITING to RUNNING, RUNNING to FAIL)
    in one conditional UPDATE; True if this call did."""
    start = expected == TrialState.WAITING
    rdb = _rdb(study._storage)
    if rdb is None:  # one process (in memory): Optuna's own call
        new = TrialState.RUNNING if start else TrialState.FAIL
        return study._storage.set_trial_state_values(trial_id, state=new)
    from optuna.storages._rdb import models

    now = datetime.now(UTC).replace(tzinfo=None)  # stored as naive UTC
    column = (
        models.TrialModel._datetime_start_utc if start else models.TrialModel._datetime_complete_utc
    )
    session = rdb.scoped_session()
    try:
        n = (
            session.query(models.TrialModel)
            .filter(models.TrialModel.trial_id == trial_id)
            .filter(models.TrialModel.state == expected)
            .update(
                {
                    models.TrialModel.state: TrialState.RUNNING if start else TrialState.FAIL,
                    column: now,
                },
                synchronize_session=False,
            )
        )
        session.commit()
        return n == 1
    except Exception:
        session.rollback()
        raise
    finally:
        session.close()
        rdb.scoped_session.remove()
