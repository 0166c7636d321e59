"""The Optuna objective: one trial is one training run at a sampled width and learning rate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import optuna
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from study import _faults
from study.data import Dataset, load_dataset
from study.sampling import LR, WIDTH, PerWidthPruner
from study.space import Space
from study.storage import TrialEnd, set_user_attrs, write_reports
from study.train import EpochResult, TrainResult, train

__all__ = ["Objective", "trial_seed"]


def trial_seed(space: Space, trial_number: int) -> int:
    """Initialization and batch-order seed of a trial: fixed by the space seed and the trial."""
    return (space.seed * 1_000_003 + trial_number) % (2**63)


class Objective:
    """Suggests ``width`` then ``lr``, trains, reports the validation loss every epoch.

    Returns the best validation loss reached. A trial whose loss went NaN/inf or far above its
    initial loss is reported, marked ``diverged`` and raised as pruned: a returned NaN would make
    it FAIL, which TPE ignores, so a diverging lr would look unexplored.

    Args:
        space: the validated search space.
        device: where the data and the models live.
    """

    def __init__(self, space: Space, device: torch.device) -> None:
        self.space = space
        self.device = device
        self._data: Dataset | None = None

    @property
    def data(self) -> Dataset:
        if self._data is None:
            self._data = load_dataset(self.space.dataset, self.space.seed, self.device)
        return self._data

    def distributions(self) -> tuple[CategoricalDistribution, FloatDistribution]:
        """The distributions of ``width`` and ``lr``."""
        space = self.space
        return (
            CategoricalDistribution(list(space.model.widths)),
            FloatDistribution(space.lr.low, space.lr.high, log=True),
        )

    def suggest(self, trial: optuna.Trial) -> tuple[int, float]:
        """The trial's width (first: the sampler balances widths on it) and lr."""
        width_dist, lr_dist = self.distributions()  # the ones a new trial is stored with
        width = trial.suggest_categorical(WIDTH, width_dist.choices)
        lr = trial.suggest_float(LR, lr_dist.low, lr_dist.high, log=lr_dist.log)
        return int(width), lr

    @staticmethod
    def reporter(trial: optuna.Trial, reports: Reports) -> Callable[[EpochResult], bool]:
        """Reports each epoch's validation loss; True when the trial should stop."""

        def on_epoch(ep: EpochResult) -> bool:
            reports.add(trial, ep.epoch, ep.val_loss)
            reports.write_if_due()
            if trial._trial_id in reports.lost:
                return True  # stop: its retry runs in its place
            return not ep.diverged and trial.should_prune()

        return on_epoch

    @staticmethod
    def stack_reporter(
        trials: list[optuna.Trial], reports: Reports
    ) -> Callable[[list[int], list[EpochResult]], list[bool]]:
        """For a stack of ``trials``: reports the epoch's validation loss of every member
        still training, then asks the pruner about each (see :func:`study.train_stacked`)."""
        if trials:
            pruner = trials[0].study.pruner
            if isinstance(pruner, PerWidthPruner):  # one read of the finished trials serves
                pruner.started_together([t._trial_id for t in trials])  # every member's first

        def on_epoch(members: list[int], eps: list[EpochResult]) -> list[bool]:
            live = [trials[m] for m in members]
            for t, ep in zip(live, eps, strict=True):
                reports.add(t, ep.epoch, ep.val_loss)
            reports.write_if_due()
            return [
                t._trial_id in reports.lost or (not ep.diverged and t.should_prune())
                for t, ep in zip(live, eps, strict=True)
            ]

        return on_epoch

    def end(
        self, trial: optuna.Trial, r: TrainResult, extra: dict[str, Any] | None = None
    ) -> TrialEnd:
        """How the run ends the trial: COMPLETE with its best validation loss, or PRUNED if
        stopped or diverged; the run's record (and ``extra``) as user attrs."""
        attrs: dict[str, Any] = {
            "best_val_loss": r.best_val_loss,
            "final_val_loss": r.final_val_loss,
            "val_accuracy": r.val_accuracy,
            "train_loss": r.final_train_loss,
            "initial_val_loss": r.initial_val_loss,
            "best_epoch": r.best_epoch,
            "n_params": r.n_params,
            "epochs_run": r.epochs_run,
            "seconds": round(r.seconds, 4),
            "eval_seconds": round(r.eval_seconds, 4),
            "report_seconds": round(r.callback_seconds, 4),
            "device": str(self.device),
            "diverged": r.diverged,
            **({"early_stopped": True} if r.early_stopped else {}),
            **(extra or {}),
        }
        attrs = {  # JSON has no NaN/inf; keep them readable
            k: str(v) if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in attrs.items()
        }
        if r.diverged or r.stopped:
            return TrialEnd(trial, TrialState.PRUNED, None, attrs)
        return TrialEnd(trial, TrialState.COMPLETE, r.best_val_loss, attrs)

    def finish(self, trial: optuna.Trial, r: TrainResult, lr: float) -> float:
        """Record the run on the trial, in one write; its value, or TrialPruned if stopped or
        diverged."""
        end = self.end(trial, r)
        set_user_attrs(trial, end.user_attrs)
        if r.diverged:
            raise optuna.TrialPruned(f"diverged at epoch {r.epochs_run} (lr={lr:.3g})")
        if r.stopped:
            raise optuna.TrialPruned(f"pruned at epoch {r.epochs_run}")
        assert end.value is not None
        return end.value

    def __call__(self, trial: optuna.Trial) -> float:
        width, lr = self.suggest(trial)
        seed = trial_seed(self.space, trial.number)
        reports = Reports()
        try:
            r = train(self.space, self.data, width, lr, seed, self.reporter(trial, reports))
        finally:
            reports.write()
        return self.finish(trial, r, lr)


# How often reported values are written to the storage while trials train.
REPORT_WRITE_S = 1.0


class Reports:
    """Values reported by running trials: each goes to its trial at once (the pruner asks the
    trial, not the storage) and to the storage in one write at most every ``every_s`` seconds
    and on :meth:`write`, which the runner calls before a trial is told.

    A write per epoch was 1.8-2.0 ms a member-epoch of a stack in a two-process study, a third
    of width 32's epoch, and each write takes SQLite's one write lock, which the other process
    waits for. The dashboard shows a running trial's curve at most ``every_s`` late; a killed
    trial loses at most that much of its curve (it is failed and retried anyway).
    """

    def __init__(self, every_s: float = REPORT_WRITE_S) -> None:
        self._every_s = every_s
        self._rows: list[tuple[optuna.Trial, int, float]] = []
        self._written = time.monotonic()
        # Trials found finished by another process while this one ran them (a stale check saw
        # their heartbeat late: they were failed and their retry queued). They are lost here.
        self.lost: set[int] = set()

    def add(self, trial: optuna.Trial, step: int, value: float) -> None:
        """As ``trial.report(value, step)`` (a step reported before is ignored), unwritten."""
        values = trial._cached_frozen_trial.intermediate_values
        if step not in values:
            values[step] = float(value)
            self._rows.append((trial, step, float(value)))
            _faults.at_epoch(trial.number, step, self.write)  # tests only: see study._faults

    def write_if_due(self) -> None:
        if time.monotonic() - self._written >= self._every_s:
            self.write()

    def take(self) -> list[tuple[optuna.Trial, int, float]]:
        """The values not stored yet, for the caller to store (no longer held here)."""
        rows, self._rows = self._rows, []
        self._written = time.monotonic()
        return rows

    def write(self) -> None:
        """Store every value not stored yet, in one write (none of a lost trial)."""
        self.lost |= write_reports(self.take())
