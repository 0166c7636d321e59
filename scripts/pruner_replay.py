"""Replay a study trained without pruning through pruner settings: what each one saves, and how
far it moves each width's lr*.

    python scripts/pruner_replay.py --space cnn_digits --write-reference  # its _nopruning.toml
    python -m study.run --space cnn_digits_nopruning.toml --trials 200 --storage sqlite:///ref.db
    python scripts/pruner_replay.py --storage sqlite:///ref.db \
        --study-name cnn_digits_nopruning --space cnn_digits

The recorded validation curves (every trial ran all its epochs) are fed, in random orders, to the
tool's own per-width percentile pruner (50: the median pruner), as a live study reports them; a
trial the pruner stops keeps only the epochs it ran. lr* per width is then estimated as the report
does, and compared with the estimate from the full curves. No training: a setting is judged on the
same trials in seconds. What a replay cannot show is the sampler's reaction to pruning (TPE places
later lrs by the earlier results): check a setting chosen here live, ``python scripts/bench.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import optuna
from bench import without_speedups
from optuna.trial import TrialState

from study.analysis import analyze, points_from_trials
from study.builders import build_pruner
from study.names import LR, WIDTH
from study.space import PrunerConfig, Space, load_space, space_to_toml
from study.train import out_of_patience


def _epoch_seconds(study: optuna.Study) -> dict[int, float]:
    """Training seconds per epoch of each width in the source study (its trials' ``seconds``)."""
    seconds: dict[int, float] = {}
    epochs: dict[int, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if WIDTH in t.params and "seconds" in t.user_attrs and t.intermediate_values:
            w = int(t.params[WIDTH])
            seconds[w] = seconds.get(w, 0.0) + float(t.user_attrs["seconds"])
            epochs[w] = epochs.get(w, 0) + len(t.intermediate_values)
    return {w: seconds[w] / epochs[w] for w in seconds}


def _curves(study: optuna.Study) -> list[tuple[int, float, list[float], bool]]:
    """(width, lr, validation loss per epoch, diverged) of every finished trial."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if WIDTH not in t.params:
            continue
        curve = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        diverged = bool(t.user_attrs.get("diverged"))
        if t.state == TrialState.PRUNED and not diverged:
            raise SystemExit(
                f"error: trial {t.number} was pruned: replay needs a study run with pruner 'none'"
            )
        out.append((int(t.params[WIDTH]), float(t.params[LR]), curve, diverged))
    return out


def replay(
    space: Space,
    pruner: PrunerConfig,
    curves: list[tuple[int, float, list[float], bool]],
    order: Sequence[int],
    patience: int = 0,
) -> tuple[optuna.Study, list[int]]:
    """Feed ``curves`` in ``order`` to the space's pruner set to ``pruner``, each stopped early
    as ``training.patience`` would stop it (0: off); (study, epochs each curve ran, in the order
    of ``curves``)."""
    run_space = dataclasses.replace(space, pruner=pruner)
    study = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=0), pruner=build_pruner(run_space)
    )
    widths = list(space.model.widths)
    ran = [0] * len(curves)
    for i in order:
        width, lr, curve, diverged = curves[i]
        study.enqueue_trial({WIDTH: width, LR: lr})
        trial = study.ask()
        trial.suggest_categorical(WIDTH, widths)
        trial.suggest_float(LR, space.lr.low, space.lr.high, log=True)
        stopped = False
        best_epoch, lowest = 0, math.inf
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            ran[i] += 1
            if value < lowest:
                best_epoch, lowest = epoch, value
            if epoch < len(curve) and trial.should_prune():
                stopped = True
                break
            if out_of_patience(epoch, best_epoch, patience, len(curve)):
                break  # early stopping: the trial completes with its best loss
        finite = [v for v in curve[:epoch] if math.isfinite(v)]
        best = min(finite) if finite else math.inf
        trial.set_user_attr("best_val_loss", best if math.isfinite(best) else "inf")
        trial.set_user_attr("diverged", diverged)
        if stopped or diverged:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, best)
    return study, ran


def _lr_star(space: Space, trials: list[optuna.trial.FrozenTrial]) -> dict[int, float | None]:
    fit = analyze(
        points_from_trials(trials),
        list(space.model.widths),
        (space.lr.low, space.lr.high),
        n_bootstrap=1,
    )
    return {e.width: e.lr_star for e in fit.widths}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/pruner_replay.py", description=__doc__)
    p.add_argument("--storage", help="a study run with pruner 'none'")
    p.add_argument("--study-name")
    p.add_argument("--space", default="mlp_digits", help="the space whose pruner is replayed")
    p.add_argument("--orderings", type=int, default=20)
    p.add_argument("--percentiles", default="50,75", help="pruner percentiles to try (50: median)")
    p.add_argument("--warmups", default="3,5,10", help="n_warmup_steps to try")
    p.add_argument(
        "--patiences",
        default="0",
        help="training.patience values to try (0: off; early stopping without a better loss)",
    )
    p.add_argument(
        "--protects",
        default="0",
        help="protect_log2 values to try (0: off; never prune near the width's best lr)",
    )
    p.add_argument(
        "--write-reference",
        action="store_true",
        help="write SPACE_nopruning.toml here (--space with its pruner and early stopping off: "
        "run it, then replay it) and exit",
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(args.space)
    if args.write_reference:
        out = Path(f"{space.name}_nopruning.toml")
        out.write_text(space_to_toml(without_speedups(space)))
        run = f"python -m study.run --space {out} --trials 200 --storage sqlite:///ref.db"
        print(f"written: {out}; run it with\n  {run} --no-report")
        return 0
    if not (args.storage and args.study_name):
        p.error("--storage and --study-name are required (or --write-reference)")
    source = optuna.load_study(study_name=args.study_name, storage=args.storage)
    curves = _curves(source)
    full_epochs = sum(len(c[2]) for c in curves)
    per_epoch = _epoch_seconds(source)
    # Training time of a replay: each epoch it ran at its width's measured seconds per epoch.
    cost = [per_epoch.get(c[0], math.nan) for c in curves]
    full_time = sum(len(c[2]) * k for c, k in zip(curves, cost, strict=True))
    reference = _lr_star(space, source.get_trials(deepcopy=False))
    widths = list(space.model.widths)
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(curves)) for _ in range(args.orderings)]
    print(f"{len(curves)} trials, {full_epochs} epochs unpruned; {args.orderings} orderings")
    print(
        "lr* move (log2, pruned - unpruned estimate) per width: median over the orderings "
        "(+: pruning moves lr* up) / largest |move|"
    )
    print(
        "epochs: share of the unpruned epochs run; time: of their training time "
        "(each width's seconds per epoch as measured in the source study)"
    )
    print(f"{'setting':<50} {'epochs':>6} {'time':>5}  " + "  ".join(f"{w:>10}" for w in widths))
    settings = [
        (float(q), int(w), float(k), int(e))
        for q in args.percentiles.split(",")
        for w in args.warmups.split(",")
        for k in args.protects.split(",")
        for e in args.patiences.split(",")
    ]
    for percentile, warmup, protect, patience in settings:
        cfg = dataclasses.replace(
            space.pruner,
            name="percentile",
            percentile=percentile,
            n_warmup_steps=warmup,
            per_width=True,
            protect_log2=protect,
        )
        moves: dict[int, list[float]] = {w: [] for w in widths}
        used, spent = [], []
        for order in orders:
            study, ran = replay(space, cfg, curves, order, patience)
            used.append(sum(ran))
            spent.append(sum(n * k for n, k in zip(ran, cost, strict=True)))
            for w, v in _lr_star(space, study.get_trials(deepcopy=False)).items():
                ref = reference.get(w)
                if v and ref:
                    moves[w].append(math.log2(v / ref))
        share = float(np.mean(used)) / full_epochs
        time_share = float(np.mean(spent)) / full_time
        cells = [
            f"{np.median(moves[w]):+5.2f}/{max(np.abs(moves[w])):4.2f}" if moves[w] else "-"
            for w in widths
        ]
        name = f"percentile {percentile:g}, warmup {warmup}"
        if protect:
            name += f", protect {protect:g}"
        if patience:
            name += f", patience {patience}"
        print(f"{name:<50} {share:6.0%} {time_share:5.0%}  " + "  ".join(f"{c:>10}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
