"""Fault points for tests: a run's process dies or freezes at a known point of a trial.

A test that kills a run must not try to catch a moment in time: on a fast machine the moment
passes between two looks at the storage. It names the point instead, before starting the run:

    STUDY_FAULT=kill@3          the first process to store a trial's epoch 3 kills itself (SIGKILL)
    STUDY_FAULT=stop@3          ... stops itself (SIGSTOP) until sent SIGCONT or SIGKILL
    STUDY_FAULT=kill@3:worker   only a worker process started by the run takes the fault
    STUDY_FAULT=stop@2#12       only a trial numbered 12 or more takes it (after 12 trials)
    STUDY_FAULT_TOKEN=PATH      required with STUDY_FAULT: the first process to create PATH takes
                                the fault, every other one goes on

The process has stored its trial's values up to that epoch; it writes ``PID TRIAL_NUMBER`` and a
newline to PATH, and only then signals itself: a test that has read a whole line from PATH knows
which process took the fault, in which trial, and that its curve is stored. Outside tests
STUDY_FAULT is unset and the check costs one comparison per reported epoch.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

__all__ = ["FAULT_ENV", "TOKEN_ENV", "at_epoch", "parse", "set_worker"]

FAULT_ENV = "STUDY_FAULT"
TOKEN_ENV = "STUDY_FAULT_TOKEN"
_SIGNALS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


@dataclass(frozen=True)
class Fault:
    signal: signal.Signals
    epoch: int  # 1-based, as EpochResult.epoch
    worker_only: bool
    token: str
    from_trial: int = 0  # trials numbered lower never take it


def parse(spec: str | None, token: str | None) -> Fault | None:
    """The fault ``STUDY_FAULT`` and ``STUDY_FAULT_TOKEN`` name; None when unset.

    Raises:
        ValueError: a malformed spec or a missing token (a test's mistake, not a user's).
    """
    if not spec:
        return None
    action, _, rest = spec.partition("@")
    at, _, who = rest.partition(":")
    epoch, _, first = at.partition("#")
    if (
        action not in _SIGNALS
        or not epoch.isdigit()
        or int(epoch) < 1
        or who not in ("", "worker")
        or not (first.isdigit() or first == "")
    ):
        raise ValueError(
            f"{FAULT_ENV}={spec!r}: expected kill@EPOCH or stop@EPOCH[#TRIAL][:worker]"
        )
    if not token:
        raise ValueError(f"{FAULT_ENV} needs {TOKEN_ENV}, the file that says who took the fault")
    return Fault(_SIGNALS[action], int(epoch), who == "worker", token, int(first or 0))


_fault = parse(os.environ.get(FAULT_ENV), os.environ.get(TOKEN_ENV))
_in_worker = False


def set_worker() -> None:
    """Called by a worker process that the run started (for ``:worker`` faults)."""
    global _in_worker
    _in_worker = True


def at_epoch(trial_number: int, epoch: int) -> None:
    """Take the fault if this is its epoch (the epoch's value is stored) and no other process
    took it: say who takes it in the token file, then signal this process."""
    f = _fault
    if (
        f is None
        or epoch != f.epoch
        or trial_number < f.from_trial
        or (f.worker_only and not _in_worker)
    ):
        return
    try:
        fd = os.open(f.token, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return  # another process took it
    os.write(fd, f"{os.getpid()} {trial_number}\n".encode())
    os.close(fd)
    os.kill(os.getpid(), f.signal)
