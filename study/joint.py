"""All widths at once: valleys that share their shape, centres on the line lr* = c * width^-alpha.

Per width, the points fitted are those :func:`study.analysis.window` picks around the width's best
complete trial (log loss against x = log2 lr), as for the per-width estimate. Where the per-width
estimate fits one parabola per width and then a line through their six vertices, this fits one
model to every point:

    log loss = m_w + a * x^2 + (b + d * u_w) * x,        u_w = log2 width

a level m_w per width, one curvature a shared by every width, and a linear term whose slope in x
moves with u_w. Each width's parabola then has its vertex at x*_w = -(b + d u_w) / (2a): on a line
in u_w by construction, with slope -d / (2a), so alpha = d / (2a). The model is linear in
(m_w, a, b, d): one least-squares solve, no iterations, cheap enough to refit on every bootstrap
replicate. What it shares: the curvature (the valley's width in log2 lr, the same at every width
where the shape is shared); what it pools: every point's evidence on the line, not six vertices'.

A width whose own valley departs from the line is not hidden: the report keeps each width's own
lr* and interval beside the line, and flags a width whose interval excludes the line.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["joint_line", "lack_of_fit"]


def lack_of_fit(residuals: np.ndarray, replicates: list[np.ndarray]) -> float:
    """How far, in log2 lr, the widths' own lr* depart from the line beyond their noise: the
    standard deviation tau of a departure per width, by the method of moments (the residuals'
    mean square about the line, minus the widths' mean bootstrap variance, floored at 0).

    Args:
        residuals: per width, its own log2 lr* minus the line's.
        replicates: per width, the bootstrap replicates of its own log2 lr*.
    """
    k = len(residuals)
    if k < 3:
        return 0.0
    noise = float(np.mean([np.var(r) for r in replicates]))
    return math.sqrt(max(0.0, float((residuals**2).sum()) / (k - 2) - noise))


def joint_line(
    xs: list[np.ndarray], ys: list[np.ndarray], u: np.ndarray, margin: float = 4.0
) -> tuple[float, float] | None:
    """(slope, intercept) of the vertices' line x* = intercept + slope * u.

    Args:
        xs: per width, log2 lr of the fitted points.
        ys: per width, log loss of those points.
        u: log2 width, one per entry of ``xs``.
        margin: how far, in log2 lr, a width's vertex may lie beyond its points (the fit's
            window, study.analysis.WINDOW_LOG2, by default).

    Returns:
        None where the points fix no convex shared valley (curvature <= 0, too few points, or a
        width's vertex more than ``margin`` beyond its points).
    """
    k = len(xs)
    n = sum(len(x) for x in xs)
    if k < 2 or n < k + 3:
        return None
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    xm, um = float(x.mean()), float(u.mean())
    xc = x - xm  # centred, so that the solve is well conditioned
    uc = np.repeat(u - um, [len(a) for a in xs])
    design = np.zeros((n, k + 3))
    design[np.arange(n), np.repeat(np.arange(k), [len(a) for a in xs])] = 1.0
    design[:, k] = xc * xc
    design[:, k + 1] = xc
    design[:, k + 2] = uc * xc
    coef, _, rank, _ = np.linalg.lstsq(design, y, rcond=None)
    if rank < k + 3:
        return None
    a, b, d = coef[k], coef[k + 1], coef[k + 2]
    if not a > 0:
        return None
    slope = -d / (2 * a)
    # x*(u) = xm - (b + d (u - um)) / (2a) = intercept + slope * u
    intercept = xm - (b - d * um) / (2 * a)
    # A nearly flat shared valley (a close to 0) puts the line anywhere (slopes up to 379 were
    # seen): every width's vertex must lie within ``margin`` log2 units of that width's points.
    # Not within them: on real studies that refused most early lines, and the answer came no
    # sooner than the per-width fit's (docs/answer-first.md).
    for xw, uw in zip(xs, u, strict=True):
        if not xw.min() - margin <= intercept + slope * uw <= xw.max() + margin:
            return None
    return float(slope), float(intercept)
