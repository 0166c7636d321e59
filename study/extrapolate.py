"""lr* beyond the measured widths: a prediction with an honest interval, the leave-one-out misses
that say how far such predictions have been right, and a check for a bend in the power law.

The prediction at width W is the fitted line lr* = c * W^-alpha. Its 95% prediction interval
carries two uncertainties, added in quadrature in log2 lr:

* the fit's: the spread of the bootstrap lines at W (each bootstrap replicate's line, as the
  report's band, extended to W);
* the scatter of the measured widths about the line: a new width departs from the power law as
  much as the measured ones do, t(n-2) * s with s the residual standard deviation of the
  per-width lr* about the line (the OLS prediction interval's departure term; its line terms,
  1/n and the leverage, are the bootstrap's spread above and are not counted twice). With only
  two widths there is no scatter to measure: the term is left out, and the command says so.

Leave-one-out: each measured width predicted from the others' lr* by the same line (no new
trials); the largest miss, in log2 units, is how far a prediction has been off on this study.
A bend: a parabola in log2 width through the per-width lr*, refitted on every bootstrap
replicate; when the 95% interval of its curvature excludes 0, lr* is not a power law in width
here and an extrapolation is flagged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from study.analysis import Fit

__all__ = ["Bend", "LeaveOneOut", "Prediction", "bend", "leave_one_out", "predict"]


def _bounded(log2_lr: float) -> float:
    """A log2 lr within what a float's power of 2 holds (a wild line must not overflow)."""
    return min(1000.0, max(-1000.0, log2_lr))


# Student's t 97.5% quantiles by degrees of freedom (the 95% two-sided interval).
_T975 = {
    **{1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306},
    **{9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179},
}


def _t975(df: int) -> float:
    return _T975.get(df, 1.96 + 2.5 / df)  # within 0.01 of the exact quantile from 13 on


@dataclass(frozen=True)
class Prediction:
    width: int
    lr_pred: float
    lr_low: float  # 95% prediction interval
    lr_high: float
    lr_transfer: float  # plain transfer: the base (or narrowest) measured width's lr*
    transfer_width: int
    scatter_included: bool  # False with two widths: the interval holds the fit's spread only

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LeaveOneOut:
    width: int
    lr_measured: float
    lr_predicted: float
    miss_log2: float  # log2 predicted - log2 measured


@dataclass(frozen=True)
class Bend:
    curvature: float  # second-order coefficient of log2 lr* in log2 width
    low: float
    high: float

    @property
    def flagged(self) -> bool:
        return self.low > 0 or self.high < 0


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def predict(fit: Fit, width: int, transfer_width: int) -> Prediction:
    """lr* at ``width`` from ``fit`` with its prediction interval; ``transfer_width``: the
    measured width whose lr* plain transfer would use (the base width, else the narrowest).

    Raises:
        ValueError: the fit has no line (fewer than two estimated widths).
    """
    if fit.alpha is None or fit.intercept_log2 is None or fit.line_replicates is None:
        raise ValueError("the study has no scaling fit: it needs at least 2 widths with an lr*")
    x = np.log2(fit.used_widths)
    y = np.array([_log2_star(fit, w) for w in fit.used_widths])
    x0 = math.log2(width)
    centre = fit.intercept_log2 - fit.alpha * x0
    tail = 0.025
    boot = fit.line_replicates[:, 0] * x0 + fit.line_replicates[:, 1]  # the band's lines
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    half_fit = max(centre - lo, hi - centre, 0.0)
    n = len(x)
    half_scatter = 0.0
    if n > 2:
        resid = y - (fit.intercept_log2 - fit.alpha * x)
        s = math.sqrt(float((resid**2).sum()) / (n - 2))
        sxx = float(((x - x.mean()) ** 2).sum())
        t = _t975(n - 2)
        del sxx  # the line's own uncertainty is the bootstrap's (half_fit), not counted twice
        half_scatter = t * s
    half = math.hypot(half_fit, half_scatter)
    nearest = min(fit.used_widths, key=lambda w: abs(math.log2(w / transfer_width)))
    return Prediction(
        width=width,
        lr_pred=2.0 ** _bounded(centre),
        lr_low=2.0 ** _bounded(centre - half),
        lr_high=2.0 ** _bounded(centre + half),
        lr_transfer=2.0 ** _log2_star(fit, nearest),
        transfer_width=nearest,
        scatter_included=n > 2,
    )


def _log2_star(fit: Fit, width: int) -> float:
    est = next(e for e in fit.widths if e.width == width)
    assert est.lr_star is not None
    return math.log2(est.lr_star)


def leave_one_out(fit: Fit) -> list[LeaveOneOut]:
    """Each estimated width predicted by the line through the others (needs 3 widths)."""
    widths = fit.used_widths
    if len(widths) < 3:
        return []
    x = np.log2(widths)
    y = np.array([_log2_star(fit, w) for w in widths])
    out = []
    for i, w in enumerate(widths):
        keep = np.arange(len(widths)) != i
        slope, intercept = _line(x[keep], y[keep])
        pred = slope * x[i] + intercept
        out.append(LeaveOneOut(w, 2.0 ** y[i], 2.0**pred, float(pred - y[i])))
    return out


def bend(fit: Fit, confidence: float = 0.95) -> Bend | None:
    """The curvature of log2 lr* in log2 width with its bootstrap interval (needs 3 widths)."""
    if fit.replicates is None or len(fit.used_widths) < 3:
        return None
    x = np.log2(fit.used_widths)
    y = np.array([_log2_star(fit, w) for w in fit.used_widths])
    tail = (1 - confidence) / 2
    curv = np.array([np.polyfit(x, row, 2)[0] for row in fit.replicates])
    lo, hi = np.quantile(curv, [tail, 1 - tail])
    c = float(np.polyfit(x, y, 2)[0])
    return Bend(c, float(min(lo, c)), float(max(hi, c)))


def extrapolation_json(fit: Fit) -> dict[str, Any]:
    """What a report states about extrapolating: the leave-one-out misses and the bend."""
    loo = leave_one_out(fit)
    b = bend(fit)
    worst = max(loo, key=lambda m: abs(m.miss_log2)) if loo else None
    return {
        "leave_one_out": [asdict(m) for m in loo],
        "largest_miss_log2": abs(worst.miss_log2) if worst else None,
        "largest_miss_width": worst.width if worst else None,
        "bend": {**asdict(b), "flagged": b.flagged} if b else None,
    }


def extrapolation_words(fit: Fit) -> str:
    """One line for the report: the largest leave-one-out miss and any bend."""
    info = extrapolation_json(fit)
    if info["largest_miss_log2"] is None:
        return ""
    line = (
        f"Leave-one-out: each width predicted from the others misses by at most "
        f"{info['largest_miss_log2']:.2f} log2 units ({2 ** info['largest_miss_log2']:.2g}x), "
        f"at width {info['largest_miss_width']}."
    )
    b = info["bend"]
    if b and b["flagged"]:
        line += (
            f" lr* bends (curvature {b['curvature']:+.2f} [{b['low']:+.2f}, {b['high']:+.2f}] "
            "per log2 width squared): it is not a power law here, and extrapolating is risky."
        )
    return line
