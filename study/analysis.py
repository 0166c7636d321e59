"""The answer: each width's optimal learning rate with an interval, and how it scales with width.

Per width, lr* is estimated from the COMPLETE trials (value = best validation loss reached):
a parabola in log2 lr is fitted to log loss over the points within ``window_log2`` of the best
one (widened to the nearest two on a side with fewer in the window); its vertex is lr* when the
fit is convex and the vertex stays inside the window, else the best trial's lr is (the argmin).

The window is wide (:data:`WINDOW_LOG2`, 4 log2 units: a factor 16 each way) because the
valleys are flat at the bottom: on digits, every lr within 1-2 log2 units of the optimum ends
within a few percent of the best loss, so the best trial is a coin toss among them and a narrow
fit follows it. Measured against a grid of every width at 21 lrs x 3 seeds
(``scripts/lr_grid.py``, docs/trust.md), over 5 studies of ``mlp_digits``: the estimate's mean
distance from the middle of the grid's valley (the lrs within 5% of its lowest loss) was 0.29
log2 with a window of 4 and 0.58 with 2 (largest 0.82 and 2.11), and between studies of the
same space each width's lr* spread 0.12 log2 against 0.46 (standard deviations).
Bootstrap replicates (trials resampled with replacement within each width) give the interval of
every lr*. The exponent alpha in ``lr* ~ width^-alpha`` comes from one fit of every width's
windowed points at once (study.joint: valleys sharing their curvature, vertices on a line), its
interval from the same replicates refitted, widened by the widths' lack of fit; with
``estimator="per_width"`` it is the OLS slope of the per-width log2 lr* on log2 width, sign
flipped (the estimator before #23).

How the other trials enter:
* pruned trials stopped early, so their best loss is only an upper bound of what they would have
  reached: they are left out of the fit, counted, drawn, and used to tell whether the optimum is
  bracketed (a pruned trial was worse than its width's median, or worse percentile, at the same
  epoch, so it counts as a worse point);
* diverged trials have no usable loss: left out of the fit, counted, drawn as red crosses, and
  count as worse points for bracketing.
An optimum with no finished trial beyond it on one side, or within one log2 unit of the range's
bound, is flagged ``at_edge``: the range must be widened before that width's lr* can be trusted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from study.joint import joint_line, lack_of_fit
from study.names import BEST_VAL_LOSS, DIVERGED, LR, WIDTH, is_verification

__all__ = [
    "MIN_COMPLETE",
    "WINDOW_LOG2",
    "headline",
    "in_plain_words",
    "Fit",
    "Point",
    "StudyReport",
    "WidthEstimate",
    "analyze",
    "estimate_lr_star",
    "points_from_trials",
]

# A width needs this many COMPLETE trials for an estimate of its lr*.
MIN_COMPLETE = 3
# Half-width of the fitted window around the best trial, log2 units of lr (see above). A pruner
# that should not move lr* protects the trials in it (``protect_log2`` of the space's pruner).
WINDOW_LOG2 = 4.0


@dataclass(frozen=True)
class Point:
    """One finished trial, reduced to what the estimator needs."""

    width: int
    lr: float
    value: float  # best validation loss reached (inf when diverged with no finite epoch)
    state: str  # "complete" | "pruned" | "diverged"
    number: int = -1


def points_from_trials(trials: list[FrozenTrial]) -> list[Point]:
    """Finished trials (complete, pruned, diverged) as points; FAIL/RUNNING/WAITING skipped."""
    out = []
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        if WIDTH not in t.params or LR not in t.params or is_verification(t):
            continue
        if t.state == TrialState.COMPLETE:
            state, value = "complete", float(t.value)  # type: ignore[arg-type]
        else:
            state = "diverged" if t.user_attrs.get(DIVERGED) else "pruned"
            value = float(t.user_attrs.get(BEST_VAL_LOSS, math.inf))  # "inf" is stored as text
        out.append(Point(int(t.params[WIDTH]), float(t.params[LR]), value, state, t.number))
    return out


def window(x: np.ndarray, y: np.ndarray, window_log2: float) -> np.ndarray:
    """Which points (``x`` = log2 lr, ``y`` = log loss) a fit of the valley uses: those within
    ``window_log2`` of the best one, and on a side with fewer than two there, that side's
    nearest two (trials are not evenly spaced in lr)."""
    x0 = x[int(np.argmin(y))]
    near = np.abs(x - x0) <= window_log2
    for side in (x < x0, x > x0):
        if (near & side).sum() < 2:
            nearest = np.argsort(np.where(side, np.abs(x - x0), np.inf))[:2]
            near[nearest[side[nearest]]] = True
    return near


def estimate_lr_star(x: np.ndarray, y: np.ndarray, window_log2: float) -> tuple[float, str]:
    """lr* (in log2) from points ``x`` = log2 lr, ``y`` = log loss of COMPLETE trials.

    Returns:
        (log2 lr*, method) where method is ``"parabola"`` or ``"argmin"``.
    """
    near = window(x, y, window_log2)
    x0 = x[int(np.argmin(y))]
    xs, ys = x[near], y[near]
    if len(xs) >= 3 and xs.min() < x0 < xs.max():
        fit = _parabola(xs - x0, ys)
        if fit is not None and fit[0] > 0:
            vertex = x0 - fit[1] / (2 * fit[0])
            if xs.min() <= vertex <= xs.max():
                return float(vertex), "parabola"
    return float(x0), "argmin"


def _parabola(u: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    """(a, b) of the least-squares parabola a u^2 + b u + c through the points; None where they
    do not determine one (fewer than three distinct u).

    The 3x3 normal equations, solved directly (Cramer's rule): the bootstrap fits 6,000 of
    these a report, and ``np.polyfit`` (an SVD of the scaled Vandermonde matrix) took about
    80 us each. The caller centres u on the best point, whose window is at most a few log2
    units wide, so the equations are well conditioned; the vertices agree with
    ``np.polyfit``'s to about 1e-12 log2 (tests/test_analysis.py).
    """
    v = np.vander(u, 5, increasing=True)  # 1, u, u^2, u^3, u^4
    n, s1, s2, s3, s4 = v.sum(0).tolist()
    t0, t1, t2 = (y @ v[:, :3]).tolist()
    # Cramer's rule on [[s4, s3, s2], [s3, s2, s1], [s2, s1, n]] (a, b, c) = (t2, t1, t0).
    m11, m12, m13 = s2 * n - s1 * s1, s3 * n - s1 * s2, s3 * s1 - s2 * s2
    det = s4 * m11 - s3 * m12 + s2 * m13
    if not det > 1e-9 * (abs(s4 * m11) + abs(s3 * m12) + abs(s2 * m13)):  # singular
        return None
    a = (t2 * m11 - s3 * (t1 * n - s1 * t0) + s2 * (t1 * s1 - s2 * t0)) / det
    b = (s4 * (t1 * n - s1 * t0) - t2 * m12 + s2 * (s3 * t0 - t1 * s2)) / det
    return a, b


@dataclass
class WidthEstimate:
    width: int
    trials: int
    complete: int
    pruned: int
    diverged: int
    lr_star: float | None = None
    lr_low: float | None = None  # bootstrap interval (confidence given by Fit.confidence)
    lr_high: float | None = None
    best_value: float | None = None
    best_lr: float | None = None
    method: str | None = None  # parabola | argmin
    edge: str | None = None  # "low" | "high" when the optimum is not bracketed or near a bound
    note: str = ""

    @property
    def at_edge(self) -> bool:
        return self.edge is not None

    def lr_errors(self) -> tuple[float, float]:
        """How far the interval reaches below and above lr* (both >= 0): error bars."""
        assert self.lr_star is not None and self.lr_low is not None and self.lr_high is not None
        return max(0.0, self.lr_star - self.lr_low), max(0.0, self.lr_high - self.lr_star)


@dataclass
class Fit:
    """The scaling law lr* ~ width^-alpha and the per-width estimates it rests on."""

    widths: list[WidthEstimate]
    alpha: float | None
    alpha_low: float | None
    alpha_high: float | None
    shift_log2: float | None  # log2 lr*(widest) - log2 lr*(narrowest), estimated widths only
    intercept_log2: float | None  # log2 lr* at width 1 of the fitted line
    used_widths: list[int]
    note: str
    settings: dict[str, Any] = field(default_factory=dict)
    band: list[tuple[float, float]] = field(default_factory=list)  # fit interval per used width
    # Bootstrap replicates of log2 lr*, one row per replicate, one column per used width (for
    # predictions beyond the measured widths, study.extrapolate); not written to fit.json.
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)
    # Estimated widths whose own lr* interval excludes the fitted line.
    departures: list[int] = field(default_factory=list)
    # Bootstrap replicates of the line: (slope, intercept) of log2 lr* on log2 width per row.
    line_replicates: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("replicates")
        out.pop("line_replicates")
        out["widths"] = [{**asdict(w), "at_edge": w.at_edge} for w in self.widths]
        out["counts"] = {
            k: sum(getattr(w, k) for w in self.widths)
            for k in ("trials", "complete", "pruned", "diverged")
        }
        return out


def _edge(
    pts: list[Point], best_lr: float, lr_star: float, lr_range: tuple[float, float]
) -> str | None:
    lower = any(p.lr < best_lr for p in pts)
    higher = any(p.lr > best_lr for p in pts)
    low, high = lr_range
    if not lower or math.log2(lr_star / low) < 1:
        return "low"
    if not higher or math.log2(high / lr_star) < 1:
        return "high"
    return None


def _ols_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of the least-squares line (as ``np.polyfit(x, y, 1)``, in closed
    form: the bootstrap fits 1,000 of these)."""
    xm, ym = x.mean(), y.mean()
    slope = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    return slope, float(ym - slope * xm)


def analyze(
    points: list[Point],
    widths: list[int],
    lr_range: tuple[float, float],
    *,
    window_log2: float = WINDOW_LOG2,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    estimator: str = "joint",
) -> Fit:
    """Estimate lr* per width with bootstrap intervals and fit lr* ~ width^-alpha.

    Args:
        points: finished trials (see :func:`points_from_trials`).
        widths: the space's widths, in order.
        lr_range: the space's (low, high) lr bounds, for the edge check.
        window_log2: half-width, in log2 units of lr, of the window fitted around the best point.
        n_bootstrap: bootstrap replicates for the intervals.
        confidence: interval coverage (0.95 = 2.5th to 97.5th percentile).
        seed: the bootstrap's random seed.
        estimator: how alpha and the line are fitted: ``"joint"`` (every width's points at
            once, valleys sharing their shape: study.joint) or ``"per_width"`` (the OLS line
            through the per-width lr*).
    """
    if estimator not in ("joint", "per_width"):
        raise ValueError(f"estimator must be 'joint' or 'per_width', got {estimator!r}")
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    estimates: list[WidthEstimate] = []
    replicates: dict[int, np.ndarray] = {}
    # Per estimated width: its points (log2 lr, log loss) and each replicate's resampled indices.
    draws: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for w in widths:
        pts = [p for p in points if p.width == w]
        comp = [p for p in pts if p.state == "complete" and math.isfinite(p.value) and p.value > 0]
        est = WidthEstimate(
            width=w,
            trials=len(pts),
            complete=len(comp),
            pruned=sum(p.state == "pruned" for p in pts),
            diverged=sum(p.state == "diverged" for p in pts),
        )
        estimates.append(est)
        if len(comp) < MIN_COMPLETE:
            est.note = f"too few complete trials ({len(comp)} < {MIN_COMPLETE}) to estimate lr*"
            continue
        x = np.log2([p.lr for p in comp])
        y = np.log([p.value for p in comp])
        x_star, est.method = estimate_lr_star(x, y, window_log2)
        best = comp[int(np.argmin(y))]
        est.lr_star, est.best_value, est.best_lr = 2.0**x_star, best.value, best.lr
        boot = np.empty(n_bootstrap)
        draws[w] = (x, y, np.empty((n_bootstrap, len(comp)), dtype=np.intp))
        for b in range(n_bootstrap):
            idx = rng.integers(0, len(comp), len(comp))
            draws[w][2][b] = idx
            boot[b] = estimate_lr_star(x[idx], y[idx], window_log2)[0]
        replicates[w] = boot
        low, high = np.percentile(boot, [tail, 100 - tail])
        # The interval holds its estimate: a bound equal to it up to rounding (all replicates
        # on one point) came out 1e-16 past it, and a negative error bar crashed the report.
        est.lr_low, est.lr_high = float(2.0 ** min(low, x_star)), float(2.0 ** max(high, x_star))
        est.edge = _edge(pts, best.lr, est.lr_star, lr_range)
        if est.edge:
            est.note = (
                f"optimum at the {est.edge} edge of the evidence or range: widen lr.{est.edge}"
            )

    settings = {
        "estimator": "parabola in log2 lr on log loss around the best complete trial; "
        "argmin when not convex or the vertex leaves the window",
        "window_log2": window_log2,
        "n_bootstrap": n_bootstrap,
        "confidence": confidence,
        "bootstrap": "complete trials resampled with replacement within each width",
        "fit": "one least-squares fit of every width's windowed points, log loss = m_w + "
        "a x^2 + (b + d log2 w) x: valleys sharing their curvature, vertices on a line in log2 "
        "width; alpha = d / 2a (study.joint)"
        if estimator == "joint"
        else "OLS slope of log2 lr* on log2 width; alpha = -slope",
        "estimator_alpha": estimator,
        "min_complete_per_width": MIN_COMPLETE,
        "pruned": "left out of the fit (their loss is an upper bound); count as worse points "
        "for the edge check",
        "diverged": "left out of the fit (no usable loss); count as worse points for the edge "
        "check",
        "seed": seed,
    }
    used = [e for e in estimates if e.lr_star is not None]
    if len(used) < 2:
        return Fit(
            widths=estimates,
            alpha=None,
            alpha_low=None,
            alpha_high=None,
            shift_log2=None,
            intercept_log2=None,
            used_widths=[e.width for e in used],
            note="the scaling fit needs at least 2 widths with an estimate of lr*, "
            f"got {len(used)}",
            settings=settings,
        )
    xw = np.log2([e.width for e in used])
    ys = np.log2([e.lr_star for e in used])  # type: ignore[misc]
    slope, intercept = _ols_slope(xw, ys)
    lines = np.empty((n_bootstrap, 2))  # (slope, intercept) of each replicate's line
    for b in range(n_bootstrap):
        lines[b] = _ols_slope(xw, np.array([replicates[e.width][b] for e in used]))
    note = ""
    if estimator == "joint":
        joint = _joint(used, draws, xw, window_log2, n_bootstrap)
        if joint is None:
            note = "the shared-valley fit found no convex valley: alpha is the per-width line's"
            settings["estimator_alpha"] = "per_width (the joint fit found no valley)"
        else:
            (slope, intercept), joint_lines, failed = joint
            # A replicate whose points fix no convex shared valley keeps its per-width line.
            ok = ~np.isnan(joint_lines[:, 0])
            lines[ok] = joint_lines[ok]
            if failed:
                note = (
                    f"{failed} of {n_bootstrap} bootstrap replicates fixed no shared valley "
                    "and used the per-width line"
                )
    boot_slopes = lines[:, 0]
    boot_lines = lines[:, :1] * xw + lines[:, 1:]
    lo, hi = np.percentile(-boot_slopes, [tail, 100 - tail])
    lo, hi = min(lo, -slope), max(hi, -slope)  # the interval holds its estimate
    band_lo, band_hi = np.percentile(boot_lines, [tail, 100 - tail], axis=0)
    settings["alpha_bootstrap"] = [float(lo), float(hi)]  # before any lack of fit is added
    if estimator == "joint":
        tau = lack_of_fit(ys - (slope * xw + intercept), [replicates[e.width] for e in used])
        settings["lack_of_fit_log2"] = tau
        if tau > 0:
            # Widths departing from the line (a valley's lopsidedness, a bend) beyond what their
            # own noise explains: a random departure per width, which the bootstrap over trials
            # does not see, added in quadrature to each side of the intervals.
            # The normal quantile, not Student's t(k-2): measured on simulated studies
            # (scripts/estimator_coverage.py), z kept coverage >= 90% and t only widened it.
            t = NormalDist().inv_cdf(0.5 + confidence / 2)
            xc = xw - xw.mean()
            sxx = float((xc**2).sum())
            extra = t * tau / math.sqrt(sxx)
            lo, hi = -slope - math.hypot(-slope - lo, extra), -slope + math.hypot(hi + slope, extra)
            line = slope * xw + intercept
            band_extra = t * tau * np.sqrt(1 / len(used) + xc**2 / sxx)
            band_lo = line - np.hypot(line - band_lo, band_extra)
            band_hi = line + np.hypot(band_hi - line, band_extra)
    edges = [e.width for e in used if e.at_edge]
    # A width whose own interval excludes the line departs from the power law: flagged, not hidden.
    departures = [
        e.width
        for e, at in zip(used, slope * xw + intercept, strict=True)
        if not e.lr_low <= 2.0**at <= e.lr_high  # type: ignore[operator]
    ]
    notes = [note] if note else []
    if departures:
        notes.insert(
            0, f"widths {departures} depart from the line (their own lr* interval excludes it)"
        )
    if edges:
        notes.insert(
            0, f"widths {edges} have their optimum at an edge: alpha may be biased; widen the range"
        )
    note = "; ".join(notes)
    return Fit(
        widths=estimates,
        alpha=-slope,
        alpha_low=float(lo),
        alpha_high=float(hi),
        shift_log2=float(ys[-1] - ys[0]),
        intercept_log2=intercept,
        used_widths=[e.width for e in used],
        note=note,
        settings=settings,
        band=[
            (float(2.0**a), float(2.0**b))
            for a, b in zip(
                np.clip(band_lo, -1000, 1000), np.clip(band_hi, -1000, 1000), strict=True
            )
        ],
        replicates=np.column_stack([replicates[e.width] for e in used]),
        line_replicates=lines,
        departures=departures,
    )


def _joint(
    used: list[WidthEstimate],
    draws: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    xw: np.ndarray,
    window_log2: float,
    n_bootstrap: int,
) -> tuple[tuple[float, float], np.ndarray, int] | None:
    """The shared-valley line (study.joint) on the points and on every bootstrap replicate (the
    same resamples as the per-width estimates'): ((slope, intercept), replicate lines with NaN
    where a replicate fixed none, how many did not); None when the points fix none."""

    def line(pick: list[np.ndarray]) -> tuple[float, float] | None:
        xs, ys = [], []
        for e, idx in zip(used, pick, strict=True):
            x, y, _ = draws[e.width]
            xb, yb = x[idx], y[idx]
            near = window(xb, yb, window_log2)
            xs.append(xb[near])
            ys.append(yb[near])
        return joint_line(xs, ys, xw, margin=window_log2)

    point = line([np.arange(len(draws[e.width][0])) for e in used])
    if point is None:
        return None
    lines = np.full((n_bootstrap, 2), np.nan)
    for b in range(n_bootstrap):
        got = line([draws[e.width][2][b] for e in used])
        if got is not None:
            lines[b] = got
    return point, lines, int(np.isnan(lines[:, 0]).sum())


def headline(fit: Fit, study_name: str) -> str:
    """One line: alpha with its interval and the total shift, or what is missing."""
    if fit.alpha is None:
        return f"{study_name}: no scaling fit: {fit.note}"
    conf = int(round(fit.settings.get("confidence", 0.95) * 100))
    first, last = fit.used_widths[0], fit.used_widths[-1]
    return (
        f"{study_name}: lr* ~ width^-alpha with alpha = {fit.alpha:.2f} "
        f"[{fit.alpha_low:.2f}, {fit.alpha_high:.2f}] ({conf}% bootstrap); lr* moves "
        f"{fit.shift_log2:+.2f} log2 units from width {first} to {last}"
    )


def in_plain_words(fit: Fit) -> str:
    """The fit in a sentence a reader takes in at once, e.g. "lr* falls about 8.8x from width
    32 to 1024"; empty when there is no fit."""
    if fit.alpha is None:
        return ""
    first, last = fit.used_widths[0], fit.used_widths[-1]
    factor = 2.0 ** abs(fit.shift_log2)
    if factor < 1.5:
        return f"lr* stays within {factor:.2g}x from width {first} to {last}"
    way = "falls" if fit.shift_log2 < 0 else "rises"
    return f"lr* {way} about {factor:.2g}x from width {first} to {last}"


@dataclass
class StudyReport:
    """One study, analysed: what the files and figures are made from."""

    study: optuna.Study
    widths: list[int]
    lr_range: tuple[float, float]
    points: list[Point]
    fit: Fit

    @property
    def name(self) -> str:
        return self.study.study_name
