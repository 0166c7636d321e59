"""Carry the answer to the width you will train: the predicted lr* at an unseen width, then, with
``--verify K``, K trials there that say whether the prediction held.

    python -m study.predict --study-name mlp_digits --width 2048 --verify 8

The prediction, its 95% prediction interval and the leave-one-out misses are those of
:mod:`study.extrapolate`; plain transfer's lr is the base width's lr* (the narrowest width's
under SP), the lr muTransfer would carry over unchanged.

Verification trials are stored in the study itself, marked with the width they verify and
their index (``verify_width``, ``verify_index``): never fitted, never counted toward
``--trials``. Their lrs are fixed once, on the first run, and stored with the study
(``verify_plan:W``): spread evenly in log lr from a quarter of the prediction interval's lower
end to four times its upper end, and one at plain transfer's lr. A killed run leaves its trial
RUNNING; the next run fails it once its heartbeat is stale and runs that index again, so the
same K trials finish, no more. They are trained to the end (no pruning), to measure the
whole valley.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from study._cli import command_parser
from study._errors import UserError
from study.builders import default_workers, resolve_device
from study.extrapolate import Prediction, extrapolation_words, predict
from study.names import SPACE
from study.report import load_report_study
from study.report_files import analyse_study
from study.storage import DEFAULT_STORAGE
from study.urls import mask_url
from study.user_parts import prepare_space
from study.verification import (
    Verification,
    penalty_words,
    verification_points,
    verify_plan_key,
)

__all__ = ["main", "plan_lrs"]

MIN_VERIFY = 3


# How far beyond the prediction interval the verification lrs reach on each side (a factor).
BEYOND = 4.0


def plan_lrs(pred: Prediction, k: int, lr_range: tuple[float, float]) -> list[float]:
    """``k`` lrs: evenly spread in log lr over the prediction interval and a factor
    :data:`BEYOND` past it on both sides, within the study's lr range; one of them at plain
    transfer's lr where that lies outside this span (so its penalty is measured, not guessed)."""
    low = min(max(pred.lr_low / BEYOND, lr_range[0]), lr_range[1])
    high = max(min(pred.lr_high * BEYOND, lr_range[1]), lr_range[0])
    if not high > low * 1.01:  # the whole span past one end of the study's lr range
        raise UserError(
            f"the predicted lr* at width {pred.width}, {pred.lr_pred:.3g} "
            f"[{pred.lr_low:.3g}, {pred.lr_high:.3g}], lies outside the study's lr range "
            f"{lr_range[0]:g}..{lr_range[1]:g}: verifying it needs a study with a wider range"
        )
    outside = not low <= pred.lr_transfer <= high
    lrs = [float(x) for x in np.geomspace(low, high, k - 1 if outside else k)]
    return sorted([*lrs, pred.lr_transfer]) if outside else lrs


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "study.predict", "Predict lr* at a width beyond the study's, and verify it with trials."
    )
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the storage")
    p.add_argument("--study-name", default=None, help="the study (default: the storage's only one)")
    p.add_argument(
        "--width", type=int, required=True, help="the width to predict lr* for (required)"
    )
    p.add_argument(
        "--verify",
        type=int,
        default=0,
        metavar="K",
        help=f"then run K >= {MIN_VERIFY} trials at that width and compare (default: 0, none)",
    )
    p.add_argument(
        "--out", default=None, help="write prediction.json into this folder (default: none)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that run the verification trials (default: one per core on CPU, at "
        "most 4; one on a GPU)",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        help="seconds between a verification trial's heartbeats; one silent for 3x this is "
        "failed and run again",
    )
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
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be a positive integer, got {args.workers}")
    if args.heartbeat < 1:
        raise UserError(f"--heartbeat must be a positive integer, got {args.heartbeat}")


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
            from study.cost import check_memory
            from study.space import with_changes

            try:
                wide = with_changes(space, {"model.widths": [args.width]})
            except UserError as e:  # e.g. "...: model.widths: must be at most 16,777,216, ..."
                raise UserError(f"--width {str(e).rpartition('model.widths: ')[2]}") from None
            space = prepare_space(space)  # the same data and a working model, or one line
            check_memory(
                wide,
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
            try:
                lrs = plan_lrs(pred, args.verify, rep.lr_range)
            except UserError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
            plan = {"lrs": lrs, "prediction": pred.to_json()}
            study.set_user_attr(verify_plan_key(args.width), plan)
        say(
            f"verify:     {len(plan['lrs'])} trials at width {args.width}, lr "
            f"{plan['lrs'][0]:.3g} .. {plan['lrs'][-1]:.3g}"
        )
        try:
            status = run_verification(
                args.storage,
                study.study_name,
                space,
                args.device,
                args.width,
                plan["lrs"],
                say,
                args.heartbeat,
                args.workers or default_workers(resolve_device(args.device), 1, len(plan["lrs"])),
            )
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if status != 0:
            return status
        trials = load_report_study(args.storage, study.study_name).get_trials(deepcopy=False)
        v = Verification(verification_points(trials, args.width), pred, rep.lr_range)
        e = v.estimate
        if e.lr_star is None or e.edge:
            say(f"measured:   no trustworthy lr* at width {args.width}: {e.note}")
        else:
            where = "inside" if v.inside else "outside"
            assert v.miss_log2 is not None
            side = "above" if v.miss_log2 > 0 else "below"
            say(
                f"measured:   lr* at width {args.width} = {e.lr_star:.3g} "
                f"[{e.lr_low:.3g}, {e.lr_high:.3g}]: {abs(v.miss_log2):.2f} log2 units "
                f"({2 ** abs(v.miss_log2):.2g}x) {side} the prediction, {where} its interval"
                + ("" if v.inside or not v.overlap else " (the two intervals overlap)")
            )
        say(
            f"penalty:    at the predicted lr {penalty_words(v.penalty_pred)}; at plain "
            f"transfer's lr {penalty_words(v.penalty_transfer)} (against the best loss found "
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
