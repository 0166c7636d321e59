"""Running ``study.predict --verify``'s trials: K fixed lrs at one width, in the study itself,
each index finished exactly once however often the run is killed and started again.

A process takes an index that has no finished trial and no live one: it claims the index's
queued retry (a killed trial, failed when its heartbeat went stale, is queued again with the
same lr by the storage's retry callback) or creates a new trial; one read afterwards checks
that no other process took the same index first (else its trial is failed before training,
as a surplus trial of the study is). Training and telling are the study's own
(:mod:`study.runner`), without pruning.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from study._errors import UserError
from study._optuna_fixes import claim_waiting_trial, heartbeat
from study.builders import resolve_device
from study.names import LR, SURPLUS, VERIFY_INDEX, VERIFY_WIDTH, WIDTH, WORKER
from study.objective import Objective, create_trials, trial_seed, trial_template
from study.runner import POLL_S, Deferred, _fail_all, _tell, _worker_id, fail_stale
from study.space import Space, space_from_dict
from study.storage import open_storage
from study.train import train

__all__ = ["run_verification"]


def _mine(study: optuna.Study, width: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(VERIFY_WIDTH) == width]


def _take(study: optuna.Study, width: int, lrs: list[float]) -> optuna.Trial | None | bool:
    """A trial of an index nobody runs, created or claimed (its heartbeat not yet started);
    None when every index is finished; False when the rest are running elsewhere."""
    fail_stale(study)
    mine = _mine(study, width)
    done = {
        t.user_attrs[VERIFY_INDEX]
        for t in mine
        if t.state.is_finished() and t.state != TrialState.FAIL
    }
    if len(done) == len(lrs):
        return None
    running = {t.user_attrs[VERIFY_INDEX] for t in mine if t.state == TrialState.RUNNING}
    free = [i for i in range(len(lrs)) if i not in done and i not in running]
    if not free:
        return False
    for t in mine:
        if t.state == TrialState.WAITING and t.user_attrs[VERIFY_INDEX] in free:
            if claim_waiting_trial(study, t._trial_id):
                return optuna.Trial(study, t._trial_id)
    i = free[0]
    template = trial_template(
        {WIDTH: width, LR: lrs[i]},
        _distributions(study, width),
        {WORKER: _worker_id()},
        user_attrs={VERIFY_WIDTH: width, VERIFY_INDEX: i},
    )
    (trial_id,) = create_trials(study, [template])
    trial = optuna.Trial(study, trial_id)
    first = min(
        (
            t.number
            for t in _mine(study, width)
            if t.user_attrs[VERIFY_INDEX] == i and t.state != TrialState.FAIL
        ),
        default=trial.number,
    )
    if first != trial.number:  # another process took this index a moment before
        study._storage.set_trial_system_attr(trial_id, SURPLUS, True)
        study.tell(trial, state=TrialState.FAIL)
        return False
    return trial


def _distributions(study: optuna.Study, width: int) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    for t in study.get_trials(deepcopy=False):
        if LR in t.distributions and WIDTH in t.distributions:
            w = t.distributions[WIDTH]
            width_dist = (
                CategoricalDistribution([width])
                if isinstance(w, CategoricalDistribution)
                else IntDistribution(width, width, log=True)
            )
            return {WIDTH: width_dist, LR: t.distributions[LR]}
    raise RuntimeError("a study to verify has trials with width and lr")


def run_verification(
    storage_url: str,
    study_name: str,
    space: Space,
    device: str,
    width: int,
    lrs: list[float],
    say: Callable[..., Any],
    heartbeat_s: int = 10,
    workers: int = 1,
) -> int:
    """Run the verification trials at ``width`` until each of ``lrs`` has finished once, in
    this process and ``workers`` - 1 more (one torch thread each when there are several).
    Returns 0, or 130 after Ctrl-C (the trial running is failed; the next run redoes it)."""
    args = (storage_url, study_name, space.to_dict(), device, width, lrs, heartbeat_s)
    if workers <= 1:
        return _verify(*args, say)
    import multiprocessing

    torch.set_num_threads(1)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=args, daemon=True) for _ in range(workers - 1)]
    for p in procs:
        p.start()
    try:
        status = _verify(*args, say)
    except BaseException:
        for p in procs:
            p.terminate()
        raise
    for p in procs:
        p.join()
    return status


def _worker(*args: Any) -> None:
    """A second process's share of the verification (its Ctrl-C handled by the first's end)."""
    torch.set_num_threads(1)
    try:
        _verify(*args, lambda *a: None)
    except (KeyboardInterrupt, UserError):  # the first process says it
        pass


def _verify(
    storage_url: str,
    study_name: str,
    space_dict: dict[str, Any],
    device: str,
    width: int,
    lrs: list[float],
    heartbeat_s: int,
    say: Callable[..., Any],
) -> int:
    space = space_from_dict(space_dict)
    storage = open_storage(storage_url, heartbeat_s=heartbeat_s)
    study = optuna.load_study(
        study_name=study_name, storage=storage, pruner=optuna.pruners.NopPruner()
    )
    objective = Objective(space, resolve_device(device))
    try:
        while True:
            trial = _take(study, width, lrs)
            if trial is None:
                return 0
            if trial is False:
                time.sleep(POLL_S)  # the others run elsewhere, or wait to go stale
                continue
            lost: set[int] = set()
            with heartbeat(storage, trial._trial_id):
                try:
                    lr = float(trial.params[LR])
                    seed = trial_seed(space, trial.number)
                    say(f"            trial {trial.number}: width {width}, lr {lr:.3g}")
                    r = train(
                        space, objective.data, width, lr, seed, objective.reporter(trial, lost)
                    )
                except BaseException:
                    _fail_all(study, [trial])
                    raise
                with Deferred() as held:
                    _tell(study, [objective.end(trial, r)], lost)
                held.deliver()
    except KeyboardInterrupt:
        say("interrupted: run the same command again to finish the verification")
        return 130
    finally:
        storage.engine.dispose()
