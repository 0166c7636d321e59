"""Worker processes: one trial process per core (or as asked), all on the same storage.

The run's own process is the first worker; the others are forked (CPU, Linux) or spawned, each
with its own storage connection, sampler seed and objective, and each runs
:func:`study.runner.run_trials` to the same exact total. A worker killed outright leaves its
trials RUNNING: their heartbeat stops, and another process fails and retries them.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from study import _faults
from study._console import Progress, count_trials
from study._errors import STORAGE_FULL_STATUS, StorageFull, is_storage_full
from study.builders import (
    CPU_STACK_MAX_WIDTH,
    build_pruner,
    build_sampler,
    resolve_device,
    run_seed,
)
from study.objective import Objective
from study.runner import PROGRESS_S, Deferred, run_trials
from study.space import space_from_dict
from study.storage import count_stored_trials, open_storage

__all__ = [
    "WorkerConfig",
    "quiet_sqlalchemy_log",
    "quiet_storage_full_threads",
    "run_workers",
    "start_method",
]


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
    until_ci: float | None = None  # stop once the live answer settles (study.live)


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
            until_ci=cfg.until_ci,
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
                until_ci=cfg.until_ci,
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
        with Deferred():  # a second Ctrl-C must not abandon the workers
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
