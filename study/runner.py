"""Running trials to an exact total, in one process or in several workers.

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
import gc
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from study import _faults
from study._console import Progress, count_trials
from study._errors import STORAGE_FULL_STATUS, StorageFull, is_storage_full
from study._optuna_fixes import (
    claim_stale_trial,
    claim_waiting_trial,
    heartbeat,
    heartbeat_enabled,
    stale_trial_ids,
)
from study.builders import (
    CPU_STACK_MAX_WIDTH,
    build_pruner,
    build_sampler,
    resolve_device,
    run_seed,
)
from study.objective import (
    Objective,
    TrialEnd,
    create_trials,
    finish_trials,
    trial_seed,
    trial_template,
)
from study.sampling import LR, WIDTH, WidthStratifiedSampler
from study.space import space_from_dict
from study.stacked import can_stack, train_stacked
from study.storage import count_stored_trials, open_storage
from study.train import TrainResult, train

__all__ = [
    "WorkerConfig",
    "fail_stale",
    "quiet_sqlalchemy_log",
    "quiet_storage_full_threads",
    "run_trials",
    "run_workers",
    "start_method",
]


# How often a process that waits on other processes' trials looks at the storage again (one
# incremental read, a few ms): at the end of a study every process but the last waits so.
POLL_S = 0.2
# How often the run's progress line is redrawn while it waits for its workers.
PROGRESS_S = 1.0
SURPLUS = "surplus"
WORKER = "worker"


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


class _Deferred:
    """Hold Ctrl-C back while the storage is written, then deliver it (main thread only).

    A KeyboardInterrupt between creating a trial and recording its end would leave the trial
    RUNNING until its heartbeat goes stale; inside this block it waits until the write is done.
    """

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None

    def __enter__(self) -> _Deferred:
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


def _holds_slot(study: optuna.Study, trial: optuna.Trial, target: int) -> bool:
    before = study._storage.get_all_trials(study._study_id, deepcopy=False, states=_SLOT_STATES)
    return sum(t.number < trial.number for t in before) < target


def _surplus(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail a trial that lost a race for a slot (or its width's share) before it trained.

    The caller fails it again (skipped once finished) if an interrupt lands in between.
    """
    study._storage.set_trial_system_attr(trial._trial_id, SURPLUS, True)
    study.tell(trial, state=TrialState.FAIL)


def _ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``, except that a queued trial is claimed in one conditional UPDATE
    (:func:`~study.storage.claim_waiting_trial`): Optuna's own pop lets two processes on SQLite
    both take it."""
    waiting = study._storage.get_all_trials(
        study._study_id, deepcopy=False, states=(TrialState.WAITING,)
    )
    trial_id = next((t._trial_id for t in waiting if claim_waiting_trial(study, t._trial_id)), None)
    if trial_id is None:
        trial_id = study._storage.create_new_trial(study._study_id)
    return optuna.Trial(study, trial_id)


def _new_trial(study: optuna.Study, target: int) -> optuna.Trial | None:
    """Ask for a trial and record its first heartbeat; None when it got no slot (surplus)."""
    with _Deferred() as held:
        trial = _ask(study)
        if heartbeat_enabled(study._storage):
            study._storage.record_heartbeat(trial._trial_id)  # stale from now on if we die
        # Which process runs it (host:pid), for finding a lost worker in a many-machine study.
        study._storage.set_trial_system_attr(trial._trial_id, WORKER, _worker_id())
        surplus = not _holds_slot(study, trial, target)
        if surplus:
            _surplus(study, trial)
    if held.hit and not surplus:  # Ctrl-C came while the trial was being created
        with _Deferred():
            study.tell(trial, state=TrialState.FAIL)
    held.deliver()
    return None if surplus else trial


def _tell(study: optuna.Study, ends: list[TrialEnd], lost: set[int]) -> list[TrialState | None]:
    """Tell the trials' ends (:func:`~study.storage.finish_trials`); ``lost`` gains the ids of
    those another process failed meanwhile.

    Call it inside ``_Deferred``: an interrupt between two writes would leave a trial RUNNING.

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


def _fail_all(study: optuna.Study, trials: list[optuna.Trial]) -> None:
    """Fail every trial not finished yet (what it reported is stored already)."""
    with _Deferred():  # a second Ctrl-C must not leave a trial RUNNING
        for trial in trials:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)


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
    with _Deferred() as held:
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
    stored whole (width, lr, worker; :func:`~study.storage.create_trials`), their heartbeats
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
    slots = [t for t in trials if t.state in _SLOT_STATES]
    held = sum(t.params.get(WIDTH) == width for t in slots)
    n = max(1, min(k, share - held, target - len(slots)))
    width_dist, lr_dist = objective.distributions()
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
            with _Deferred() as interrupted:  # every trial created gets its heartbeat
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
                results = train_stacked(space, objective.data, width, lrs, seeds, reporter_all)
        except BaseException:
            _fail_all(study, members)
            raise
        extra = {"stacked": len(members)} if len(members) > 1 else None
        ends = [objective.end(t, r, extra) for t, r in zip(members, results, strict=True)]
        with _Deferred() as interrupted:  # every trial is told, even if Ctrl-C comes meanwhile
            _tell(study, ends, lost)
        interrupted.deliver()
    return len(members)


def _drop_surplus(
    study: optuna.Study, members: list[optuna.Trial], target: int, width: int, share: int
) -> list[optuna.Trial]:
    """The ``members`` that hold a slot and their width's share (one read); the others are
    failed as surplus."""
    slots = study._storage.get_all_trials(study._study_id, deepcopy=False, states=_SLOT_STATES)
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
    if stack <= 1 or not can_stack(objective.space) or width > stack_max_width:
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
) -> None:
    """Run trials until the study holds ``target`` finished (COMPLETE + PRUNED) trials.

    When the slots left are all held by RUNNING trials of other processes, this waits for them
    to finish or for their heartbeat to go stale (then they are failed, queued again, and run).
    ``stop`` is asked before every trial; True ends the loop early. With ``stack`` > 1, trials
    of widths up to ``stack_max_width`` are trained ``stack`` at a time (where stacking wins).
    """
    sampler = study.sampler
    while not stop():
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


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to join the study (all picklable)."""

    space: dict[str, Any]  # the run's space, Space.to_dict() (the study's own or a file's)
    storage: str
    study_name: str
    target: int
    device: str
    threads: int
    heartbeat_s: int
    worker: int  # 0..N-1: makes each worker's sampler seed differ
    stack: int = 1
    stack_max_width: int = CPU_STACK_MAX_WIDTH


def quiet_sqlalchemy_log() -> None:
    """No traceback on the terminal from SQLAlchemy's log when Ctrl-C lands in a query.

    SQLAlchemy logs "Error closing cursor" with a traceback as it cleans up after the
    KeyboardInterrupt; with no handler, Python prints it. The interrupt itself is handled (the
    trial is failed, the run says how to resume); errors still raise as exceptions.
    """
    import logging

    logger = logging.getLogger("sqlalchemy")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def quiet_storage_full_threads() -> None:
    """No traceback from the heartbeat threads when the storage is full.

    Each running trial's heartbeat thread dies on its next write to a full disk, and Python
    prints its traceback: 16 trials printed 630 lines. The main thread meets the same error and
    says it in one line; the trials stay RUNNING, and the next run fails and retries them as it
    does a killed run's. Other errors in threads are printed as before.
    """
    if getattr(threading.excepthook, "quiet_storage_full", False):
        return
    default = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or not is_storage_full(args.exc_value):
            default(args)

    hook.quiet_storage_full = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies (a SIGKILL of the run)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker finishes its trial and sees
        pass  # that its parent is gone at the next loop


def _worker_main(cfg: WorkerConfig, parent_pid: int) -> None:
    """One worker process: its own storage connection, sampler and objective."""
    _die_with_parent()
    _faults.set_worker()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet_sqlalchemy_log()
    quiet_storage_full_threads()
    try:
        _work(cfg, parent_pid)
    except Exception as e:
        if not is_storage_full(e):
            raise
        sys.exit(STORAGE_FULL_STATUS)  # the run says it, once
    finally:
        # Python's last garbage collection walks torch's objects: 0.4 s of the run's wait for
        # this worker. Frozen objects are skipped; the storage was closed before.
        gc.freeze()


def _work(cfg: WorkerConfig, parent_pid: int) -> None:
    space = space_from_dict(cfg.space)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    storage = open_storage(cfg.storage, heartbeat_s=cfg.heartbeat_s, validated=True)
    n_existing = count_stored_trials(storage, storage.get_study_id_from_name(cfg.study_name))
    study = optuna.load_study(
        study_name=cfg.study_name,
        storage=storage,
        sampler=build_sampler(space, run_seed(space, n_existing, cfg.worker)),
        pruner=build_pruner(space),
    )
    try:
        run_trials(
            study,
            Objective(space, device),
            cfg.target,
            stop=lambda: os.getppid() != parent_pid,
            stack=cfg.stack,
            stack_max_width=cfg.stack_max_width,
        )
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        storage.engine.dispose()


def start_method(device: Any) -> str:
    """How worker processes start: ``fork`` on Linux for a CPU study, else ``spawn``.

    A spawned worker imports torch and the tool again: 2.2-3 s of a core before its first
    trial, against 0.1 s forked. The run forks before any trial: no thread of the tool's runs
    yet (no heartbeat, no torch thread pool; torch's import leaves one idle thread of its own,
    as when a DataLoader forks its workers), and the worker opens its own storage; the parent's
    connections stay referenced (never closed) in the child, which ends with ``os._exit``.
    CUDA cannot be forked, nor is fork safe on macOS: those spawn.
    """
    if getattr(device, "type", device) == "cpu" and sys.platform.startswith("linux"):
        return "fork"
    return "spawn"


def run_workers(
    configs: list[WorkerConfig],
    study: optuna.Study,
    progress: Progress,
    say: Callable[..., Any],
    objective: Objective | None = None,
    method: str = "spawn",
) -> int:
    """Run the study in one process per config, wait for all of them.

    With ``objective``, this process is the first worker (``study`` must carry that worker's
    sampler): it trains instead of waiting, and a process start is saved. Otherwise it only
    shows progress. ``method`` is the multiprocessing start method (see :func:`start_method`).

    Returns:
        0 when every worker ended cleanly, 130 after Ctrl-C (every worker is stopped), 1 when a
        worker failed (a worker killed by a signal is reported; the others go on).
    """
    ctx = multiprocessing.get_context(method)
    spawned = configs[1:] if objective is not None else configs
    procs = [
        ctx.Process(target=_worker_main, args=(c, os.getpid()), name=f"worker-{c.worker}")
        for c in spawned
    ]
    for p in procs:
        p.start()
    pids = f"(pid{'s' if len(procs) > 1 else ''} {', '.join(str(p.pid) for p in procs)})"
    if objective is not None:  # e.g. "2 processes: this one (918) and 1 started (pid 922)"
        here = f"this one ({os.getpid()}) and {len(procs)}"
        say(f"workers:   {len(configs)} processes: {here} started {pids}")
    else:
        say(f"workers:   {len(configs)} processes started {pids}")
    reported: set[int] = set()
    status = 0

    def check() -> bool:
        nonlocal status
        for i, p in enumerate(procs):
            if not p.is_alive() and i not in reported and p.exitcode not in (0, None):
                if p.exitcode == STORAGE_FULL_STATUS:
                    raise StorageFull(f"worker {spawned[i].worker} found the storage full")
                reported.add(i)
                how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"status {p.exitcode}"
                who = f"worker {spawned[i].worker} (pid {p.pid})"
                say(f"\n{who} ended with {how}; the others go on")
                status = 1
        return False

    try:
        if objective is not None:
            cfg = configs[0]
            run_trials(
                study,
                objective,
                cfg.target,
                progress,
                stop=check,
                stack=cfg.stack,
                stack_max_width=cfg.stack_max_width,
            )
        while any(p.is_alive() for p in procs):
            progress.update(count_trials(study.get_trials(deepcopy=False)))
            check()
            # Wake as soon as a worker ends, not at the next tick.
            multiprocessing.connection.wait([p.sentinel for p in procs], timeout=PROGRESS_S)
        check()
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches every worker too: give them time to fail their trial
        # and exit, then interrupt (and at last terminate) any that did not get it.
        with _Deferred():  # a second Ctrl-C must not abandon the workers
            for p in procs:
                p.join(timeout=10)
            for p in procs:
                if p.is_alive():
                    os.kill(p.pid, signal.SIGINT)
                    p.join(timeout=30)
                if p.is_alive():
                    p.terminate()
                    p.join()
        return 130
    except BaseException:
        for p in procs:  # this process failed: the workers must not outlive it
            p.terminate()
            p.join()
        raise
    for p in procs:
        p.join()
    return status
