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

import multiprocessing
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

from study._console import Progress, count_trials
from study.storage import heartbeatless_stale_trial_ids

__all__ = ["WorkerConfig", "run_trials", "run_workers"]

# How often a process that waits on other processes' trials looks at the storage again.
POLL_S = 1.0
SURPLUS = "surplus"
_SLOT_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def _fail_stale(study: optuna.Study) -> None:
    """Fail (and queue again) trials whose process died, including ones killed before their
    first heartbeat, which Optuna never considers stale."""
    if not is_heartbeat_enabled(study._storage):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    for trial_id in heartbeatless_stale_trial_ids(study):
        try:
            if study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                callback = study._storage.get_heartbeat_stale_trial_callback()
                if callback is not None:
                    callback(study, study._storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process got there first


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


def run_one_trial(
    study: optuna.Study, objective: Callable[[optuna.Trial], float], target: int
) -> TrialState:
    """Ask for a trial, run it with a heartbeat if it holds a slot, tell the result.

    Returns:
        The trial's final state. KeyboardInterrupt and errors fail the trial and propagate.
    """
    with _Deferred() as held:
        _fail_stale(study)
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for
            warnings.simplefilter("ignore", UserWarning)  # optimize(); this loop runs its own
            trial = study.ask()
        if is_heartbeat_enabled(study._storage):
            study._storage.record_heartbeat(trial._trial_id)  # stale from now on if we die
        surplus = not _holds_slot(study, trial, target)
        if surplus:
            study._storage.set_trial_system_attr(trial._trial_id, SURPLUS, True)
            study.tell(trial, state=TrialState.FAIL)
    if held.hit and not surplus:  # Ctrl-C came while the trial was being created
        with _Deferred():
            study.tell(trial, state=TrialState.FAIL)
    held.deliver()
    if surplus:
        return TrialState.FAIL
    state, value = TrialState.COMPLETE, None
    with get_heartbeat_thread(trial._trial_id, study._storage):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except BaseException:
            with _Deferred() as held:  # a second Ctrl-C must not leave the trial RUNNING
                study.tell(trial, state=TrialState.FAIL)
            raise
    with _Deferred() as held:
        study.tell(trial, value, state=state)
    held.deliver()
    return state


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    target: int,
    progress: Progress | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run trials until the study holds ``target`` finished (COMPLETE + PRUNED) trials.

    When the slots left are all held by RUNNING trials of other processes, this waits for them
    to finish or for their heartbeat to go stale (then they are failed, queued again, and run).
    ``stop`` is asked before every trial; True ends the loop early.
    """
    while not stop():
        counts = count_trials(study.get_trials(deepcopy=False))
        if progress is not None:
            progress.update(counts)
        if counts.finished >= target:
            return
        if counts.waiting == 0 and counts.finished + counts.running >= target:
            _fail_stale(study)
            time.sleep(POLL_S)
            continue
        run_one_trial(study, objective, target)


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to join the study (all picklable)."""

    space: str  # a shipped name or a path, as given on the command line
    storage: str
    study_name: str
    target: int
    device: str
    threads: int
    heartbeat_s: int
    worker: int  # 0..N-1: makes each worker's sampler seed differ


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
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        return
    import torch

    from study.objective import Objective
    from study.run import build_pruner, build_sampler, resolve_device, run_seed
    from study.space import load_space
    from study.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(cfg.space)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    storage = open_storage(cfg.storage, heartbeat_s=cfg.heartbeat_s)
    n_existing = len(storage.get_all_trials(storage.get_study_id_from_name(cfg.study_name)))
    study = optuna.load_study(
        study_name=cfg.study_name,
        storage=storage,
        sampler=build_sampler(space, run_seed(space, n_existing, cfg.worker)),
        pruner=build_pruner(space),
    )
    try:
        run_trials(
            study, Objective(space, device), cfg.target, stop=lambda: os.getppid() != parent_pid
        )
    except KeyboardInterrupt:
        sys.exit(130)


def run_workers(
    configs: list[WorkerConfig],
    study: optuna.Study,
    progress: Progress,
    say: Callable[..., Any],
) -> int:
    """Start one process per config, show progress from the storage, wait for all of them.

    Returns:
        0 when every worker ended cleanly, 130 after Ctrl-C (every worker is stopped), 1 when a
        worker failed (a worker killed by a signal is reported; the others go on).
    """
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker_main, args=(c, os.getpid()), name=f"worker-{c.worker}")
        for c in configs
    ]
    for p in procs:
        p.start()
    say(f"workers:   {len(procs)} processes (pids {', '.join(str(p.pid) for p in procs)})")
    reported: set[int] = set()
    status = 0
    try:
        while any(p.is_alive() for p in procs):
            progress.update(count_trials(study.get_trials(deepcopy=False)))
            for i, p in enumerate(procs):
                if not p.is_alive() and i not in reported and p.exitcode not in (0, None):
                    reported.add(i)
                    how = f"signal {-p.exitcode}" if p.exitcode < 0 else f"status {p.exitcode}"
                    say(f"\nworker {i} (pid {p.pid}) ended with {how}; the others go on")
                    status = 1
            time.sleep(POLL_S)
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
    for p in procs:
        p.join()
    return status
