"""Running trials to an exact total, in this process (:mod:`study.workers` starts others).

A study's *slots* are its first ``target`` trials that have not failed (ordered by number).
A trial runs only if it holds a slot; a trial created beyond them (two workers asked at the same
moment) is failed at once, before training, as ``surplus``. So however many workers run, at most
``target`` trials ever finish, and the loop stops when ``target`` have. Failed trials (Ctrl-C,
a stale heartbeat) give their slot up; a stale one is queued again with the same parameters.

Each trial sends a heartbeat while it runs (Optuna's heartbeat thread), so a process killed
outright leaves a trial that any other process fails and retries after the grace period.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from study._console import Progress, count_trials
from study._optuna_fixes import (
    claim_stale_trial,
    claim_waiting_trial,
    heartbeat,
    heartbeat_enabled,
    stale_trial_ids,
)
from study.builders import (
    CPU_STACK_MAX_WIDTH,
)
from study.live import settled
from study.names import LR, SURPLUS, WIDTH, WORKER, is_verification
from study.objective import (
    Objective,
    TrialEnd,
    create_trials,
    finish_trials,
    trial_seed,
    trial_template,
)
from study.sampling import WidthStratifiedSampler
from study.stacked import can_stack, train_stacked
from study.stacked_func import train_stacked_any
from study.train import TrainResult, train

__all__ = ["Deferred", "fail_stale", "run_trials"]


# How often a process that waits on other processes' trials looks at the storage again (one
# incremental read, a few ms): at the end of a study every process but the last waits so.
POLL_S = 0.2
# How often the run's progress line is redrawn while it waits for its workers.
PROGRESS_S = 1.0


def _worker_id() -> str:
    """host:pid of this process (read each time: a forked worker has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


_SLOT_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


# When this process last looked for stale trials: storage -> study id -> monotonic time.
_last_stale_check: weakref.WeakKeyDictionary[Any, dict[int, float]] = weakref.WeakKeyDictionary()


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose process died and queue each again right away.

    Looks at most once per heartbeat interval (a trial goes stale only after two of them).

    Stale means a heartbeat older than the grace period, or none at all for longer (a process
    killed before its first heartbeat; Optuna's own check skips those). Exactly one process
    claims each stale trial (a conditional UPDATE) and queues its retry, before looking at the
    next, so a process killed meanwhile loses at most one retry (its slot is refilled by a new
    trial; the total stays exact).
    """
    storage = study._storage
    if not heartbeat_enabled(storage):
        return
    now = time.monotonic()
    checked = _last_stale_check.setdefault(storage, {})
    if now - checked.get(study._study_id, -math.inf) < storage.get_heartbeat_interval():
        return
    checked[study._study_id] = now
    stale = stale_trial_ids(study)
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in stale:
        if not claim_stale_trial(study, trial_id):
            continue  # another process got there first
        if callback is not None:
            callback(study, storage.get_trial(trial_id))


class Deferred:
    """Hold Ctrl-C back while the storage is written, then deliver it (main thread only).

    A KeyboardInterrupt between creating a trial and recording its end would leave the trial
    RUNNING until its heartbeat goes stale; inside this block it waits until the write is done.
    """

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None

    def __enter__(self) -> Deferred:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum: int, frame: Any) -> None:
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def deliver(self) -> None:
        if self.hit:
            raise KeyboardInterrupt


def _slots(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that hold or may hold a slot (one read); study.predict's are not the study's."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False, states=_SLOT_STATES)
    return [t for t in trials if not is_verification(t)]


def _holds_slot(study: optuna.Study, trial: optuna.Trial, target: int) -> bool:
    before = _slots(study)
    return sum(t.number < trial.number for t in before) < target


def _surplus(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail a trial that lost a race for a slot (or its width's share) before it trained.

    The caller fails it again (skipped once finished) if an interrupt lands in between.
    """
    study._storage.set_trial_system_attr(trial._trial_id, SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)


def _ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``, except that a queued trial is claimed in one conditional UPDATE
    (:func:`~study._optuna_fixes.claim_waiting_trial`): Optuna's own pop lets two processes on
    SQLite both take it."""
    waiting = study._storage.get_all_trials(
        study._study_id, deepcopy=False, states=(TrialState.WAITING,)
    )
    trial_id = next(
        (
            t._trial_id
            for t in waiting
            if not is_verification(t) and claim_waiting_trial(study, t._trial_id)
        ),
        None,
    )
    if trial_id is None:
        trial_id = study._storage.create_new_trial(study._study_id)
    return optuna.Trial(study, trial_id)


def _new_trial(study: optuna.Study, target: int) -> optuna.Trial | None:
    """Ask for a trial and record its first heartbeat; None when it got no slot (surplus)."""
    with Deferred() as held:
        trial = _ask(study)
        if heartbeat_enabled(study._storage):
            study._storage.record_heartbeat(trial._trial_id)  # stale from now on if we die
        # Which process runs it (host:pid), for finding a lost worker in a many-machine study.
        study._storage.set_trial_system_attr(trial._trial_id, WORKER, _worker_id())
        surplus = not _holds_slot(study, trial, target)
        if surplus:
            _surplus(study, trial)
    if held.hit and not surplus:  # Ctrl-C came while the trial was being created
        with Deferred():
            study.tell(trial, state=TrialState.FAIL)
    held.deliver()
    return None if surplus else trial


def _tell(study: optuna.Study, ends: list[TrialEnd], lost: set[int]) -> list[TrialState | None]:
    """Tell the trials' ends (:func:`~study.objective.finish_trials`); ``lost`` gains the ids of
    those another process failed meanwhile.

    Call it inside ``Deferred``: an interrupt between two writes would leave a trial RUNNING.

    Returns:
        Each trial's state; None for one that was lost: another process failed it meanwhile
        (its stale check saw no heartbeat from here for the grace period, e.g. while this
        machine was suspended) and queued its retry, which runs in its place.
    """
    lost |= finish_trials(study, ends)
    for e in ends:
        if e.trial._trial_id in lost:
            print(
                f"trial {e.trial.number} was failed meanwhile by another process (no heartbeat "
                "from here for the grace period); its retry runs in its place",
                file=sys.stderr,
            )
    return [None if e.trial._trial_id in lost else e.state for e in ends]


# How often failing a trial is tried again when SQLite says "database is locked" at once.
FAIL_RETRIES = 5


def _fail_all(study: optuna.Study, trials: list[optuna.Trial]) -> None:
    """Fail every trial not finished yet (what it reported is stored already).

    After Ctrl-C every worker fails its trials at the same moment, and SQLite may refuse one
    of those writes at once, "database is locked" (seen once in CI's Ctrl-C test with two
    workers, under load); it is tried again, a little later each time.
    """
    with Deferred():  # a second Ctrl-C must not leave a trial RUNNING
        for trial in trials:
            for attempt in range(FAIL_RETRIES + 1):
                try:
                    study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                    break
                except optuna.exceptions.StorageInternalError as e:
                    if attempt == FAIL_RETRIES or "database is locked" not in repr(e.__cause__):
                        raise
                    time.sleep(0.1 * (attempt + 1))


def run_one_trial(study: optuna.Study, objective: Objective, target: int) -> TrialState | None:
    """Ask for a trial, run it with a heartbeat if it holds a slot, tell the result.

    Returns:
        The trial's final state (None: surplus, or lost to another process's stale check).
        KeyboardInterrupt and errors fail the trial and propagate.
    """
    trial = _new_trial(study, target)
    if trial is None:
        return None
    with heartbeat(study._storage, trial._trial_id):
        return _train_and_tell(study, objective, trial)


def _train_and_tell(
    study: optuna.Study, objective: Objective, trial: optuna.Trial
) -> TrialState | None:
    """Train one created trial (its heartbeat already running) and tell its end."""
    lost: set[int] = set()
    try:
        width, lr = objective.suggest(trial)
        seed = trial_seed(objective.space, trial.number)
        r = train(objective.space, objective.data, width, lr, seed, objective.reporter(trial, lost))
    except BaseException:
        _fail_all(study, [trial])
        raise
    with Deferred() as held:
        (state,) = _tell(study, [objective.end(trial, r)], lost)
    held.deliver()
    return state


def run_new_trials(
    study: optuna.Study,
    objective: Objective,
    target: int,
    trials: list[optuna.trial.FrozenTrial],
    width: int,
    k: int,
) -> int:
    """Create up to ``k`` trials of ``width`` and train them: alone if one, else as a stack.

    ``trials`` is the study as just read: it gives the free slots, the width's share and the
    history the lrs are sampled from (:meth:`WidthStratifiedSampler.sample_new`). The trials are
    stored whole (width, lr, worker; :func:`~study.objective.create_trials`), their heartbeats
    start at once, and one read
    afterwards checks that it holds a slot and its width's share: another worker may have
    created trials meanwhile; a trial that lost that race is failed before training (surplus).

    Returns:
        How many trials were run.
    """
    sampler = study.sampler
    assert isinstance(sampler, WidthStratifiedSampler)
    space = objective.space
    share = math.ceil(target / len(space.model.widths))
    slots = [t for t in trials if t.state in _SLOT_STATES and not is_verification(t)]
    held = sum(t.params.get(WIDTH) == width for t in slots)
    n = max(1, min(k, share - held, target - len(slots)))
    width_dist, lr_dist = objective.distributions(study)
    new = [
        trial_template(
            {WIDTH: width},
            {WIDTH: width_dist},
            {WORKER: _worker_id()},  # for finding a lost worker's trials
            number=len(trials) + i,  # the number it gets, unless another worker asks meanwhile
        )
        for i in range(n)
    ]
    sampler.sample_new(study, trials, new, LR, lr_dist)
    members: list[optuna.Trial] = []
    lost: set[int] = set()
    with contextlib.ExitStack() as beats:
        try:
            with Deferred() as interrupted:  # every trial created gets its heartbeat
                for trial_id in create_trials(study, new):
                    members.append(optuna.Trial(study, trial_id))
                    beats.enter_context(heartbeat(study._storage, trial_id))
                members = _drop_surplus(study, members, target, width, share)
            interrupted.deliver()
            lrs = [t.params[LR] for t in members]
            seeds = [trial_seed(space, t.number) for t in members]
            results: list[TrainResult] = []
            if len(members) == 1:
                reporter = objective.reporter(members[0], lost)
                results = [train(space, objective.data, width, lrs[0], seeds[0], reporter)]
            elif members:
                reporter_all = objective.stack_reporter(members, lost)
                stacked = train_stacked if can_stack(space) else train_stacked_any
                results = stacked(space, objective.data, width, lrs, seeds, reporter_all)
        except BaseException:
            _fail_all(study, members)
            raise
        extra = {"stacked": len(members)} if len(members) > 1 else None
        ends = [objective.end(t, r, extra) for t, r in zip(members, results, strict=True)]
        with Deferred() as interrupted:  # every trial is told, even if Ctrl-C comes meanwhile
            _tell(study, ends, lost)
        interrupted.deliver()
    return len(members)


def _drop_surplus(
    study: optuna.Study, members: list[optuna.Trial], target: int, width: int, share: int
) -> list[optuna.Trial]:
    """The ``members`` that hold a slot and their width's share (one read); the others are
    failed as surplus."""
    slots = _slots(study)
    kept = []
    for trial in members:
        before = [t for t in slots if t.number < trial.number]
        if len(before) < target and sum(t.params.get(WIDTH) == width for t in before) < share:
            kept.append(trial)
        else:
            _surplus(study, trial)
    return kept


def _stack_size(objective: Objective, width: int, stack: int, stack_max_width: int) -> int:
    """How many trials of ``width`` to train at once (1: a single trial);
    :func:`run_new_trials` caps it by the free slots and the width's share."""
    if stack <= 1 or width > stack_max_width or not objective.stacks:
        return 1
    return stack


def run_trials(
    study: optuna.Study,
    objective: Objective,
    target: int,
    progress: Progress | None = None,
    stop: Callable[[], bool] = lambda: False,
    stack: int = 1,
    stack_max_width: int = CPU_STACK_MAX_WIDTH,
    until_ci: float | None = None,
) -> None:
    """Run trials until the study holds ``target`` finished (COMPLETE + PRUNED) trials, or
    with ``until_ci``, until the live answer settles (:func:`study.live.settled`).

    When the slots left are all held by RUNNING trials of other processes, this waits for them
    to finish or for their heartbeat to go stale (then they are failed, queued again, and run).
    ``stop`` is asked before every trial; True ends the loop early. With ``stack`` > 1, trials
    of widths up to ``stack_max_width`` are trained ``stack`` at a time (where stacking wins).
    """
    sampler = study.sampler
    while not stop() and not settled(study, until_ci):
        fail_stale(study)  # may queue retries, which the read below then sees
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)  # one read
        counts = count_trials(trials)
        if progress is not None:
            progress.update(counts)
        if counts.finished >= target:
            return
        if counts.waiting == 0 and counts.finished + counts.running >= target:
            time.sleep(POLL_S)
            continue
        if counts.waiting or not isinstance(sampler, WidthStratifiedSampler):
            run_one_trial(study, objective, target)  # ask() runs a queued retry first
            continue
        width = sampler.next_width_of(trials)
        k = _stack_size(objective, width, stack, stack_max_width)
        run_new_trials(study, objective, target, trials, width, k)
