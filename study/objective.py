"""One trial's life: one training run at a sampled width and learning rate, recorded in Optuna.

Suggest (or create from a template), train, report every epoch, record the end: all through
Optuna's public API. The runner (:mod:`study.runner`) decides which trials run where.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
import torch
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from study import _faults
from study.data import Dataset, load_dataset
from study.names import BEST_VAL_LOSS, DIVERGED, EPOCHS_RUN, LR, WIDTH
from study.sampling import PerWidthPruner, WidthStratifiedSampler
from study.space import Space
from study.train import EpochResult, TrainResult, train

__all__ = [
    "Objective",
    "TrialEnd",
    "create_trials",
    "finish_trials",
    "report",
    "set_user_attrs",
    "trial_seed",
    "trial_template",
]


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
        self._width_dist: BaseDistribution | None = None

    @property
    def data(self) -> Dataset:
        if self._data is None:
            space = self.space
            self._data = load_dataset(space.dataset, space.seed, self.device, space.training.loss)
        return self._data

    @functools.cached_property
    def stacks(self) -> bool:
        """Whether trials of this space can train K at a time: the MLP's own stack
        (study.stacked), or any other model that torch.func stacks exactly
        (study.stacked_func.can_stack_any, asked of the narrowest model)."""
        from study.stacked import can_stack
        from study.stacked_func import can_stack_any
        from study.train import make_model

        if can_stack(self.space):
            return True
        model = make_model(self.space, min(self.space.model.widths), self.data)
        return can_stack_any(self.space, model)

    def distributions(self, study: optuna.Study) -> tuple[BaseDistribution, FloatDistribution]:
        """The distributions of ``width`` and ``lr`` that ``study``'s trials are stored with.

        Width is an integer on a log scale that only ever takes the space's widths (the sampler
        picks it): optuna-dashboard then orders it and draws it on a log axis. A study stored by
        an earlier version, with width as a category, keeps that (Optuna refuses two kinds of
        distribution for one name), and so does a study run by another sampler (a user's own
        ``study.optimize``), which would pick integers between the widths.
        """
        if self._width_dist is None:
            widths = self.space.model.widths
            self._width_dist = IntDistribution(min(widths), max(widths), log=True)
            if not isinstance(study.sampler, WidthStratifiedSampler):
                self._width_dist = CategoricalDistribution(list(widths))
            for t in study.get_trials(deepcopy=False):
                if isinstance(t.distributions.get(WIDTH), CategoricalDistribution):
                    self._width_dist = CategoricalDistribution(list(widths))
                if WIDTH in t.distributions:
                    break
        lr = self.space.lr
        return self._width_dist, FloatDistribution(lr.low, lr.high, log=True)

    def suggest(self, trial: optuna.Trial) -> tuple[int, float]:
        """The trial's width (first: the sampler balances widths on it) and lr."""
        width_dist, lr_dist = self.distributions(trial.study)  # as the study's trials have them
        if isinstance(width_dist, CategoricalDistribution):
            width = trial.suggest_categorical(WIDTH, width_dist.choices)
        else:
            width = trial.suggest_int(WIDTH, width_dist.low, width_dist.high, log=True)
        lr = trial.suggest_float(LR, lr_dist.low, lr_dist.high, log=lr_dist.log)
        return int(width), lr

    @staticmethod
    def reporter(trial: optuna.Trial, lost: set[int]) -> Callable[[EpochResult], bool]:
        """Reports each epoch's validation loss; True when the trial should stop (pruned, or
        ``lost``: failed meanwhile by another process, whose retry runs in its place)."""

        def on_epoch(ep: EpochResult) -> bool:
            if not report(trial, ep.epoch, ep.shown_loss, lost):
                return True
            return not ep.diverged and trial.should_prune()

        return on_epoch

    @staticmethod
    def stack_reporter(
        trials: list[optuna.Trial], lost: set[int]
    ) -> Callable[[list[int], list[EpochResult]], list[bool]]:
        """For a stack of ``trials``: reports the epoch's validation loss of every member
        still training, then asks the pruner about each
        (see :func:`study.stacked.train_stacked`)."""
        if trials:
            pruner = trials[0].study.pruner
            if isinstance(pruner, PerWidthPruner):  # one read of the finished trials serves
                pruner.started_together([t._trial_id for t in trials])  # every member's first

        def on_epoch(members: list[int], eps: list[EpochResult]) -> list[bool]:
            live = [trials[m] for m in members]
            reported = [
                report(t, ep.epoch, ep.shown_loss, lost) for t, ep in zip(live, eps, strict=True)
            ]
            return [
                not ok or (not ep.diverged and t.should_prune())
                for t, ep, ok in zip(live, eps, reported, strict=True)
            ]

        return on_epoch

    def end(
        self, trial: optuna.Trial, r: TrainResult, extra: dict[str, Any] | None = None
    ) -> TrialEnd:
        """How the run ends the trial: COMPLETE with its best validation loss, or PRUNED if
        stopped or diverged; the run's record (and ``extra``) as user attrs."""
        attrs: dict[str, Any] = {
            BEST_VAL_LOSS: r.best_val_loss,
            "final_val_loss": r.final_val_loss,
            "val_accuracy": r.val_accuracy,
            "train_loss": r.final_train_loss,
            "initial_val_loss": r.initial_val_loss,
            "best_epoch": r.best_epoch,
            "n_params": r.n_params,
            EPOCHS_RUN: r.epochs_run,
            "seconds": round(r.seconds, 4),
            "eval_seconds": round(r.eval_seconds, 4),
            "report_seconds": round(r.callback_seconds, 4),
            "device": str(self.device),
            DIVERGED: r.diverged,
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
        """Record the run on the trial (its user attrs); its value, or TrialPruned if stopped or
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
        r = train(self.space, self.data, width, lr, seed, self.reporter(trial, set()))
        return self.finish(trial, r, lr)


def report(trial: optuna.Trial, epoch: int, value: float, lost: set[int]) -> bool:
    """``trial.report(value, epoch)``; False (and the trial's id added to ``lost``) when another
    process failed the trial meanwhile (its stale check saw no heartbeat from here for the grace
    period, e.g. while this machine was suspended) and queued its retry."""
    try:
        trial.report(value, epoch)
    except optuna.exceptions.UpdateFinishedTrialError:
        lost.add(trial._trial_id)
        return False
    _faults.at_epoch(trial.number, epoch)  # tests only: see study._faults
    return True


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
    user_attrs: dict[str, Any] | None = None,
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
        user_attrs=user_attrs or {},
        system_attrs=system_attrs,
        intermediate_values={},
        trial_id=-1,
    )


def create_trials(study: optuna.Study, templates: Sequence[optuna.trial.FrozenTrial]) -> list[int]:
    """Create RUNNING trials from ``templates`` (their params, distributions and system attrs),
    each in one call of Optuna's ``create_new_trial``; their ids."""
    storage, study_id = study._storage, study._study_id
    return [storage.create_new_trial(study_id, template_trial=t) for t in templates]
