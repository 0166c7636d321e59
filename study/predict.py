"""Carry the answer to the width you will train: the predicted lr* at an unseen width, then, with
``--verify K``, K trials there that say whether the prediction held.

    python -m study.predict --study-name mlp_digits --width 2048 --verify 8

The prediction, its 95% prediction interval and the leave-one-out misses are those of
:mod:`study.extrapolate`; plain transfer's lr is the base width's lr* (the narrowest width's
under SP), the lr muTransfer would carry over unchanged.

Verification trials are stored in the study itself, marked with the width they verify and
their index (``verify_width``, ``verify_index``): never fitted, never counted toward
``--trials``. Their lrs are fixed once, on the first run, and stored with the study
(``verify_plan:W``): spread evenly in log lr from half the prediction interval's lower end to
twice its upper end, and out to plain transfer's lr. A killed run leaves its trial RUNNING;
the next run fails it once its heartbeat is stale and runs that index again, so the same K
trials finish, no more. They are trained to the end (no pruning), to measure the whole valley.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from study._cli import command_parser
from study._errors import UserError
from study.analysis import Point, analyze
from study.extrapolate import Prediction, extrapolation_words, predict
from study.names import LR, SPACE, VERIFY_WIDTH
from study.report import load_report_study
from study.report_files import analyse_study
from study.storage import DEFAULT_STORAGE
from study.urls import mask_url

__all__ = ["Verification", "main", "plan_lrs", "verification_points", "verify_plan_key"]

MIN_VERIFY = 3


def verify_plan_key(width: int) -> str:
    return f"verify_plan:{width}"


def plan_lrs(pred: Prediction, k: int, lr_range: tuple[float, float]) -> list[float]:
    """``k`` lrs evenly spread in log lr over the prediction interval and beyond it on both
    sides (half its low end to twice its high end), reaching plain transfer's lr; within the
    study's lr range."""
    low = min(pred.lr_low / 2, pred.lr_transfer)
    high = max(pred.lr_high * 2, pred.lr_transfer)
    low, high = max(low, lr_range[0]), min(high, lr_range[1])
    return [float(x) for x in np.geomspace(low, high, k)]


def verification_points(trials: Sequence[FrozenTrial], width: int) -> list[Point]:
    """The finished verification trials of ``width`` as the estimator's points."""
    out = []
    for t in trials:
        if t.user_attrs.get(VERIFY_WIDTH) != width or not t.state.is_finished():
            continue
        if t.state == TrialState.COMPLETE:
            out.append(Point(width, float(t.params[LR]), float(t.value), "complete", t.number))
        elif t.state == TrialState.PRUNED:
            state = "diverged" if t.user_attrs.get("diverged") else "pruned"
            out.append(Point(width, float(t.params[LR]), math.inf, state, t.number))
    return out


class Verification:
    """What the verification trials at one width measured."""

    def __init__(self, points: list[Point], pred: Prediction, lr_range: tuple[float, float]):
        self.points = points
        fit = analyze(points, [pred.width], lr_range)
        self.estimate = fit.widths[0]
        complete = sorted((p for p in points if p.state == "complete"), key=lambda p: p.lr)
        self._x = np.log2([p.lr for p in complete])
        self._y = np.log([p.value for p in complete])
        self.best = float(np.exp(self._y.min())) if complete else None
        self.inside = (
            self.estimate.lr_star is not None
            and pred.lr_low <= self.estimate.lr_star <= pred.lr_high
        )
        self.penalty_pred = self.penalty(pred.lr_pred)
        self.penalty_transfer = self.penalty(pred.lr_transfer)

    def penalty(self, lr: float) -> float | None:
        """How much worse than the best loss found at this width the loss at ``lr`` is (0.05:
        5% worse), read off the measured valley (log loss interpolated in log2 lr between the
        complete trials); inf where ``lr`` is past the last complete trial toward a diverged
        one, None where no trial brackets it."""
        if self.best is None:
            return None
        x = math.log2(lr)
        if self._x[0] - 1e-9 <= x <= self._x[-1] + 1e-9:
            return float(np.exp(np.interp(x, self._x, self._y))) / self.best - 1
        beyond = [p for p in self.points if p.state == "diverged"]
        if any((p.lr >= lr if x > self._x[-1] else p.lr <= lr) for p in beyond):
            return math.inf
        return None

    def to_json(self) -> dict[str, Any]:
        e = self.estimate
        return {
            "lr_measured": e.lr_star,
            "lr_measured_low": e.lr_low,
            "lr_measured_high": e.lr_high,
            "inside": bool(self.inside),
            "best_loss": self.best,
            "penalty_pred": _json_number(self.penalty_pred),
            "penalty_transfer": _json_number(self.penalty_transfer),
            "trials": [
                {"lr": p.lr, "loss": _json_number(p.value), "state": p.state} for p in self.points
            ],
        }


def _json_number(x: float | None) -> float | str | None:
    return str(x) if x is not None and not math.isfinite(x) else x


def _penalty_words(p: float | None) -> str:
    if p is None:
        return "not measured (no verification trial brackets it)"
    if math.isinf(p):
        return "diverged"
    return f"{p:+.1%} loss"


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "study.predict", "Predict lr* at a width beyond the study's, and verify it with trials."
    )
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the storage")
    p.add_argument("--study-name", default=None, help="the study (default: the storage's only one)")
    p.add_argument("--width", type=int, required=True, help="the width to predict lr* for")
    p.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="K",
        help=f"then run K >= {MIN_VERIFY} trials at that width and compare (default: 0, none)",
    )
    p.add_argument("--out", default=None, help="write prediction.json into this folder")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where verification trials train; auto: a GPU when there is one",
    )
    return p


def _check(args: argparse.Namespace, widths: list[int]) -> None:
    if args.width <= 0:
        raise UserError(f"--width must be a positive integer, got {args.width}")
    if min(widths) <= args.width <= max(widths):
        raise UserError(
            f"--width {args.width} is inside the measured widths {min(widths)}..{max(widths)}: "
            "predict a width beyond them (the report gives lr* at the measured ones)"
        )
    if args.verify and args.verify < MIN_VERIFY:
        raise UserError(f"--verify needs at least {MIN_VERIFY} trials, got {args.verify}")
    if args.verify < 0:
        raise UserError(f"--verify must be 0 or at least {MIN_VERIFY}, got {args.verify}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    say: Callable[..., Any] = lambda *a: print(*a, flush=True)  # noqa: E731
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study = load_report_study(args.storage, args.study_name)
        rep = analyse_study(study)
        _check(args, rep.widths)
        space_dict = study.user_attrs.get(SPACE)
        base = min(rep.widths)
        if space_dict:
            from study.space import space_from_dict

            space = space_from_dict(space_dict)
            base = space.model.base_width_for(base)
        if args.verify:
            if not space_dict:
                raise UserError(f"study {study.study_name!r} stores no space to train with")
            from study.builders import resolve_device
            from study.cost import check_memory
            from study.space import with_changes

            check_memory(
                with_changes(space, {"model.widths": [args.width]}),
                resolve_device(args.device),
                source=f"--width {args.width}",
            )
        try:
            pred = predict(rep.fit, args.width, base)
        except ValueError as e:
            raise UserError(f"study {study.study_name!r}: {e}") from None
        plan = study.user_attrs.get(verify_plan_key(args.width))
        if args.verify and plan and len(plan["lrs"]) != args.verify:
            raise UserError(
                f"width {args.width} of study {study.study_name!r} is being verified with "
                f"--verify {len(plan['lrs'])}: run that again (or predict another width)"
            )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fit = rep.fit
    say(
        f"prediction: lr* at width {pred.width} = {pred.lr_pred:.3g}, 95% prediction interval "
        f"[{pred.lr_low:.3g}, {pred.lr_high:.3g}] (from widths {fit.used_widths[0]}.."
        f"{fit.used_widths[-1]}, alpha {fit.alpha:.2f})"
        + ("" if pred.scatter_included else "; two widths: the fit's spread only")
    )
    say(
        f"transfer:   lr {pred.lr_transfer:.3g} (width {pred.transfer_width}'s lr*, carried over "
        f"unchanged), {pred.lr_transfer / pred.lr_pred:.2g}x the prediction"
    )
    if words := extrapolation_words(fit):
        say(f"trust:      {words}")
    out: dict[str, Any] = {**pred.to_json(), "study": study.study_name}
    if args.verify:
        from study.verify import run_verification

        if not plan:
            plan = {"lrs": plan_lrs(pred, args.verify, rep.lr_range), "prediction": pred.to_json()}
            study.set_user_attr(verify_plan_key(args.width), plan)
        say(
            f"verify:     {len(plan['lrs'])} trials at width {args.width}, lr "
            f"{plan['lrs'][0]:.3g} .. {plan['lrs'][-1]:.3g}"
        )
        status = run_verification(
            args.storage, study.study_name, space, args.device, args.width, plan["lrs"], say
        )
        if status != 0:
            return status
        trials = load_report_study(args.storage, study.study_name).get_trials(deepcopy=False)
        v = Verification(verification_points(trials, args.width), pred, rep.lr_range)
        e = v.estimate
        if e.lr_star is None:
            say(f"measured:   no lr* at width {args.width}: {e.note}")
        else:
            where = "inside" if v.inside else "OUTSIDE"
            say(
                f"measured:   lr* at width {args.width} = {e.lr_star:.3g} "
                f"[{e.lr_low:.3g}, {e.lr_high:.3g}], {where} the prediction interval"
            )
        say(
            f"penalty:    at the predicted lr {_penalty_words(v.penalty_pred)}; at plain "
            f"transfer's lr {_penalty_words(v.penalty_transfer)} (against the best loss found "
            f"at width {args.width})"
        )
        out.update(v.to_json())
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        out["storage"] = mask_url(args.storage)
        out["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (folder / "prediction.json").write_text(json.dumps(out, indent=2) + "\n")
        say(f"written:    {folder / 'prediction.json'}")
    return 0


def cli() -> None:
    sys.exit(main())


if __name__ == "__main__":
    cli()
