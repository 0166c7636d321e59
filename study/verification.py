"""What a verification at an unseen width measured (``study.predict --verify``): its trials, the
measured lr* with its interval, whether the prediction held, and the loss penalties of the
predicted lr and of plain transfer's lr. Read by the command and by the report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from study.analysis import Point, analyze
from study.extrapolate import Prediction
from study.names import LR, VERIFY_WIDTH

__all__ = [
    "Verification",
    "penalty_words",
    "verification_points",
    "verified_widths",
    "verify_plan_key",
]

PLAN_PREFIX = "verify_plan:"


def verify_plan_key(width: int) -> str:
    """The study's user attr holding the verification plan of ``width`` (its lrs, fixed once)."""
    return f"{PLAN_PREFIX}{width}"


def verified_widths(user_attrs: dict[str, Any]) -> list[int]:
    """The widths a study has a verification plan for."""
    return sorted(int(k[len(PLAN_PREFIX) :]) for k in user_attrs if k.startswith(PLAN_PREFIX))


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
        e = self.estimate
        self.miss_log2 = math.log2(e.lr_star / pred.lr_pred) if e.lr_star is not None else None
        self.overlap = (
            e.lr_low is not None
            and e.lr_high is not None
            and e.lr_low <= pred.lr_high
            and pred.lr_low <= e.lr_high
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
            "miss_log2": self.miss_log2,
            "intervals_overlap": bool(self.overlap),
            "best_loss": self.best,
            "penalty_pred": _json_number(self.penalty_pred),
            "penalty_transfer": _json_number(self.penalty_transfer),
            "trials": [
                {"lr": p.lr, "loss": _json_number(p.value), "state": p.state} for p in self.points
            ],
        }


def _json_number(x: float | None) -> float | str | None:
    return str(x) if x is not None and not math.isfinite(x) else x


def penalty_words(p: float | None) -> str:
    if p is None:
        return "not measured (no verification trial brackets it)"
    if math.isinf(p):
        return "diverged"
    return f"{p:+.1%} loss"
