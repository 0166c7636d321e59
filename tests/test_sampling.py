from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.pruners import MedianPruner, SuccessiveHalvingPruner
from optuna.samplers import RandomSampler
from optuna.trial import TrialState, create_trial

from study.builders import build_pruner
from study.sampling import PerWidthPruner, WidthStratifiedSampler
from study.space import load_space
from tests.conftest import write_space

WIDTHS = [8, 64, 512]
DISTS = {"width": CategoricalDistribution(WIDTHS), "lr": FloatDistribution(1e-4, 1.0, log=True)}


def _objective(trial: optuna.Trial) -> float:
    width = trial.suggest_categorical("width", WIDTHS)
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    return lr * width


def _add(study: optuna.Study, width: int, value: float, **kw: Any) -> None:
    study.add_trial(
        create_trial(
            params={"width": width, "lr": 0.01},
            distributions=DISTS,
            value=value,
            intermediate_values={1: value},
            **kw,
        )
    )


def test_every_width_gets_an_equal_share_of_trials() -> None:
    sampler = WidthStratifiedSampler(WIDTHS, optuna.samplers.TPESampler(seed=0, n_startup_trials=2))
    study = optuna.create_study(sampler=sampler)
    study.optimize(_objective, n_trials=30)
    assert Counter(t.params["width"] for t in study.trials) == {8: 10, 64: 10, 512: 10}


def test_the_width_with_fewest_trials_goes_next() -> None:
    study = optuna.create_study(sampler=WidthStratifiedSampler(WIDTHS, RandomSampler(seed=0)))
    for _ in range(3):
        _add(study, 8, 1.0)
    _add(study, 64, 1.0)
    study.optimize(_objective, n_trials=5)
    assert Counter(t.params["width"] for t in study.trials) == {8: 3, 64: 3, 512: 3}


class _SpySampler(RandomSampler):
    """Records which widths the lr sampler was shown."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.seen: list[tuple[int, set[int]]] = []

    def sample_independent(self, study, trial, param_name, param_distribution):  # type: ignore[no-untyped-def]
        shown = {t.params.get("width") for t in study._get_trials(deepcopy=False)}
        shown |= {t.params.get("width") for t in study.get_trials(deepcopy=False)}
        self.seen.append((trial.params["width"], shown - {None}))
        return super().sample_independent(study, trial, param_name, param_distribution)


def test_lr_sampler_sees_only_trials_of_the_same_width() -> None:
    spy = _SpySampler()
    study = optuna.create_study(sampler=WidthStratifiedSampler(WIDTHS, spy))
    study.optimize(_objective, n_trials=12)
    assert len(spy.seen) == 12
    for width, shown in spy.seen:
        assert shown == {width}


def test_tpe_concentrates_lr_per_width_on_that_widths_optimum() -> None:
    # Each width has its own optimum lr: 1e-1 at width 8, 1e-3 at width 512.
    best = {8: 1e-1, 64: 1e-2, 512: 1e-3}
    import math

    def objective(trial: optuna.Trial) -> float:
        w = trial.suggest_categorical("width", WIDTHS)
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        return (math.log10(lr) - math.log10(best[w])) ** 2

    sampler = WidthStratifiedSampler(WIDTHS, optuna.samplers.TPESampler(seed=1, n_startup_trials=5))
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective, n_trials=90)
    for w in WIDTHS:
        top = min((t for t in study.trials if t.params["width"] == w), key=lambda t: t.value)
        assert abs(math.log10(top.params["lr"]) - math.log10(best[w])) < 0.25


def _pruning_study(pruner: optuna.pruners.BasePruner, **attrs: Any) -> optuna.Study:
    # Width 8 trials reach 1.0; width 64 trials reach 0.1 (wider is simply better).
    study = optuna.create_study(pruner=pruner)
    for _ in range(3):
        _add(study, 8, 1.0, **attrs)
    for _ in range(5):
        _add(study, 64, 0.1, **{k: {"completed_rung_0": 0.1} for k in attrs})
    return study


def _candidate_is_pruned(study: optuna.Study, value: float) -> bool:
    study.enqueue_trial({"width": 8, "lr": 0.01})
    trial = study.ask()
    trial.suggest_categorical("width", WIDTHS)
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.report(value, 1)
    pruned = trial.should_prune()
    study.tell(
        trial,
        state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
        values=None if pruned else value,
    )
    return pruned


def test_median_pruning_compares_only_within_a_width() -> None:
    median = dict(n_startup_trials=1, n_warmup_steps=0)
    # A width-8 trial better than the width-8 median (1.0), worse than the study's (0.1).
    assert _candidate_is_pruned(_pruning_study(MedianPruner(**median)), 0.9)
    assert not _candidate_is_pruned(_pruning_study(PerWidthPruner(MedianPruner(**median))), 0.9)
    # ...and within the width it still prunes what is worse than its own width's median.
    assert _candidate_is_pruned(_pruning_study(PerWidthPruner(MedianPruner(**median))), 1.5)


def test_percentile_pruner_prunes_only_the_worst_part_of_a_width(tmp_path: Path) -> None:
    text = (
        "[model]\nwidths = [8, 64, 512]\n[lr]\nlow = 1e-4\nhigh = 1.0\n"
        "[pruner]\nname = 'percentile'\npercentile = 75\nn_startup_trials = 1\n"
        "n_warmup_steps = 0\n"
    )
    space = load_space(str(write_space(tmp_path, "p75", text)))

    def study(pruner: optuna.pruners.BasePruner) -> optuna.Study:
        s = optuna.create_study(pruner=pruner)
        for v in (1.0, 2.0, 3.0, 4.0):  # width 8: median 2.5, 75th percentile 3.25
            _add(s, 8, v)
        for _ in range(4):
            _add(s, 64, 0.1)
        return s

    pruner = build_pruner(space)
    assert isinstance(pruner, PerWidthPruner)
    assert not _candidate_is_pruned(study(pruner), 3.0)
    assert _candidate_is_pruned(study(build_pruner(space)), 3.5)
    median = dataclasses.replace(space, pruner=dataclasses.replace(space.pruner, name="median"))
    assert _candidate_is_pruned(study(build_pruner(median)), 3.0)


def _protection_study(pruner: optuna.pruners.BasePruner, lr: float) -> bool:
    """Width 8's best complete trial ran at lr 1e-3; is a poor trial at ``lr`` pruned?"""
    study = optuna.create_study(pruner=pruner)
    for trial_lr, value in ((1e-3, 0.5), (1e-2, 1.0), (1e-1, 2.0), (1e-4, 2.5)):
        study.add_trial(
            create_trial(
                params={"width": 8, "lr": trial_lr},
                distributions=DISTS,
                value=value,
                intermediate_values={1: value},
                system_attrs={"completed_rung_0": value},  # successive halving's record
            )
        )
    study.enqueue_trial({"width": 8, "lr": lr})
    trial = study.ask()
    trial.suggest_categorical("width", WIDTHS)
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    trial.report(3.0, 1)  # worse than every complete trial of its width
    return trial.should_prune()


@pytest.mark.parametrize("inner", ["median", "successive_halving"])
def test_a_trial_near_its_widths_best_lr_is_never_pruned(inner: str, tmp_path: Path) -> None:
    text = (
        "[model]\nwidths = [8, 64, 512]\n[lr]\nlow = 1e-4\nhigh = 1.0\n"
        f"[pruner]\nname = '{inner}'\nn_startup_trials = 1\nn_warmup_steps = 0\n"
        "reduction_factor = 2\nprotect_log2 = 2\n"
    )
    space = load_space(str(write_space(tmp_path, "protect", text)))
    off = dataclasses.replace(space, pruner=dataclasses.replace(space.pruner, protect_log2=0.0))
    # 2e-3 is 1 log2 unit from the best trial's 1e-3, 4e-3 is 2: both protected
    assert not _protection_study(build_pruner(space), 2e-3)
    assert not _protection_study(build_pruner(space), 4e-3)
    # 0.1 and 1e-4 are 6.6 and 3.3 log2 units away: pruned, as without protection
    assert _protection_study(build_pruner(space), 0.1)
    assert _protection_study(build_pruner(space), 1e-4)
    assert _protection_study(build_pruner(off), 2e-3)


def test_successive_halving_compares_only_within_a_width() -> None:
    sh = dict(min_resource=1, reduction_factor=3, min_early_stopping_rate=0)
    study_wide = _pruning_study(
        SuccessiveHalvingPruner(**sh), system_attrs={"completed_rung_0": 1.0}
    )
    assert _candidate_is_pruned(study_wide, 0.9)
    per_width = _pruning_study(
        PerWidthPruner(SuccessiveHalvingPruner(**sh)), system_attrs={"completed_rung_0": 1.0}
    )
    assert not _candidate_is_pruned(per_width, 0.9)


def test_hyperband_gets_its_own_brackets_per_width() -> None:
    pruner = PerWidthPruner(optuna.pruners.HyperbandPruner(min_resource=1, max_resource=9))
    study = optuna.create_study(
        pruner=pruner, sampler=WidthStratifiedSampler(WIDTHS, RandomSampler(seed=0))
    )

    def objective(trial: optuna.Trial) -> float:
        w = trial.suggest_categorical("width", WIDTHS)
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        for step in range(1, 10):
            trial.report(lr / w + 1.0 / step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return lr / w

    study.optimize(objective, n_trials=24)
    assert set(pruner._hyperbands) == set(WIDTHS)
    assert any(t.state == TrialState.PRUNED for t in study.trials)


def test_width_must_be_suggested_before_lr() -> None:
    study = optuna.create_study(sampler=WidthStratifiedSampler(WIDTHS, RandomSampler(seed=0)))
    trial = study.ask()
    with pytest.raises(RuntimeError, match="suggest 'width' before 'lr'"):
        trial.suggest_float("lr", 1e-4, 1.0, log=True)


def _count_reads(study: optuna.Study) -> list[int]:
    """From now on, count the study's reads of its trial list (the returned list's one item)."""
    reads = [0]
    get_all_trials = study._storage.get_all_trials

    def counting(*args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        reads[0] += 1
        return get_all_trials(*args, **kwargs)

    study._storage.get_all_trials = counting  # type: ignore[method-assign]
    return reads


def _noisy_curves_study(pruner: PerWidthPruner) -> tuple[list[TrialState], int]:
    """A one-process study whose curves depend on lr; returns the states and the storage reads."""
    study = optuna.create_study(
        pruner=pruner, sampler=WidthStratifiedSampler(WIDTHS, RandomSampler(seed=3))
    )
    reads = _count_reads(study)

    def objective(trial: optuna.Trial) -> float:
        w = trial.suggest_categorical("width", WIDTHS)
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        for step in range(1, 11):
            trial.report(abs(math.log10(lr) + 2) + 1.0 / step + w * 1e-4, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return abs(math.log10(lr) + 2)

    study.optimize(objective, n_trials=45)
    return [t.state for t in study.trials], reads[0]


def test_median_pruner_reads_its_snapshot_once_per_trial_and_decides_as_a_fresh_read() -> None:
    median = dict(n_startup_trials=2, n_warmup_steps=2)
    fresh, fresh_reads = _noisy_curves_study(PerWidthPruner(MedianPruner(**median), max_age_s=-1))
    cached, cached_reads = _noisy_curves_study(PerWidthPruner(MedianPruner(**median)))
    assert TrialState.PRUNED in fresh and TrialState.COMPLETE in fresh
    assert cached == fresh  # in one process, trials complete only between trials
    assert cached_reads < fresh_reads / 2


def test_a_stack_started_together_shares_one_read_and_decides_as_fresh_reads() -> None:
    def stack_decisions(pruner: PerWidthPruner, together: bool) -> tuple[list[bool], int]:
        study = optuna.create_study(pruner=pruner)
        for value in (1.0, 2.0, 3.0):  # finished trials of width 8 the members are held to
            study.add_trial(
                create_trial(
                    params={"width": 8, "lr": 0.01},
                    distributions=DISTS,
                    value=value,
                    intermediate_values={1: value},
                )
            )
        for _ in range(4):
            study.enqueue_trial({"width": 8})
        members = [study.ask() for _ in range(4)]
        for t in members:
            assert t.suggest_categorical("width", WIDTHS) == 8
        if together:
            pruner.started_together([t._trial_id for t in members])
        reads = _count_reads(study)
        decisions = []
        for t, value in zip(members, (0.5, 1.5, 2.5, 3.5), strict=True):
            t.report(value, 1)
            decisions.append(t.should_prune())
        return decisions, reads[0]

    median = dict(n_startup_trials=1, n_warmup_steps=0)
    fresh, fresh_reads = stack_decisions(PerWidthPruner(MedianPruner(**median), -1), False)
    shared, shared_reads = stack_decisions(PerWidthPruner(MedianPruner(**median)), True)
    apart, apart_reads = stack_decisions(PerWidthPruner(MedianPruner(**median)), False)
    assert fresh == [False, False, True, True]  # against the median 2.0 of width 8
    assert shared == fresh == apart
    assert (fresh_reads, apart_reads, shared_reads) == (4, 4, 1)


def test_a_stack_sampled_from_one_read_gets_the_lrs_of_asking_one_by_one() -> None:
    from datetime import datetime

    from optuna.samplers import TPESampler

    def history(study: optuna.Study) -> None:
        for i, (w, lr) in enumerate([(8, 1e-3), (8, 3e-2), (64, 1e-2), (8, 0.3), (8, 3e-3)]):
            study.add_trial(
                create_trial(params={"width": w, "lr": lr}, distributions=DISTS, value=i * 0.1)
            )

    def sampler() -> WidthStratifiedSampler:
        tpe = TPESampler(n_startup_trials=2, multivariate=False, constant_liar=True, seed=7)
        return WidthStratifiedSampler(WIDTHS, tpe)

    one_by_one = optuna.create_study(sampler=sampler())
    history(one_by_one)
    for _ in range(3):
        one_by_one.enqueue_trial({"width": 8})  # the stack's width, as the runner fixes it
    asked = []
    for _ in range(3):
        trial = one_by_one.ask()
        trial.suggest_categorical("width", WIDTHS)
        asked.append(trial.suggest_float("lr", 1e-4, 1.0, log=True))  # sees the ones before

    at_once = optuna.create_study(sampler=sampler())
    history(at_once)
    trials = at_once.get_trials(deepcopy=False)
    new = [
        optuna.trial.FrozenTrial(
            number=len(trials) + i,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params={"width": 8},
            distributions={"width": DISTS["width"]},
            user_attrs={},
            system_attrs={},
            intermediate_values={},
            trial_id=-1,
        )
        for i in range(3)
    ]
    at_once.sampler.sample_new(at_once, trials, new, "lr", DISTS["lr"])  # type: ignore[attr-defined]
    assert [t.params["lr"] for t in new] == asked
    assert len(set(asked)) == 3  # the constant liar spread them
