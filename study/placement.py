"""Where the next lr of a width goes once the study has a line: around that line's lr* for the
width, where a trial narrows the answer (``[sampler] name = "line"``).

The report's answer is the joint fit (study.joint): valleys sharing their shape, vertices on a
line in log2 width. A trial informs it most near a valley's bottom, on both sides (the points
that fix a parabola's vertex and curvature), and the line already says where every width's
bottom is, from all widths' trials: a width's fifth trial need not wait for its own evidence.
So, once a width has its start-up trials (random, log-uniform), its lrs are drawn from a normal
in log2 lr centred on the line's lr* at that width, with a standard deviation of
:data:`SPREAD_LOG2`, clipped to the range; a share :data:`EXPLORE` stays log-uniform over the
whole range so that a line in the wrong place, or an optimum at the range's edge, is still seen.
Until the line exists (two widths with three complete trials each, a convex shared valley), the
lr is random as in the start-up.

The line is refitted from the study's complete trials whenever an lr is drawn: one least-squares
solve over at most a few hundred points (well under a millisecond), no bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from study.analysis import WINDOW_LOG2, window
from study.joint import joint_line
from study.names import LR, WIDTH, is_verification

__all__ = ["EXPLORE", "SPREAD_LOG2", "LinePlacement"]

# Standard deviation, in log2 lr, of the lrs drawn around the line: most fall within the fit's
# window (analysis.WINDOW_LOG2 = 4) on both sides of the bottom.
SPREAD_LOG2 = 2.0
# The share of lrs drawn log-uniformly over the whole range after the start-up.
EXPLORE = 0.15


class LinePlacement:
    """Draws a width's lr around the joint line's lr* once it has ``startup`` trials.

    Args:
        widths: the space's widths (trials of other widths, e.g. verification, are ignored).
        low, high: the lr range.
        startup: trials of a width (finished or running) before its lrs follow the line.
        seed: the random draws' seed.
    """

    def __init__(
        self, widths: Sequence[int], low: float, high: float, startup: int, seed: int | None
    ) -> None:
        self._widths = list(widths)
        self._lo, self._hi = math.log2(low), math.log2(high)
        self._startup = startup
        self._rng = np.random.default_rng(seed)

    def line(self, trials: Sequence[FrozenTrial]) -> tuple[float, float] | None:
        """(slope, intercept) of log2 lr* on log2 width from the complete trials; None while
        they fix none."""
        xs, ys, us = [], [], []
        for w in self._widths:
            done = [
                t
                for t in trials
                if t.state == TrialState.COMPLETE
                and t.params.get(WIDTH) == w
                and not is_verification(t)
                and t.value is not None
                and math.isfinite(t.value)
                and t.value > 0
            ]
            if len(done) < 3:
                continue
            x = np.log2([t.params[LR] for t in done])
            y = np.log([t.value for t in done])
            near = window(x, y, WINDOW_LOG2)
            xs.append(x[near])
            ys.append(y[near])
            us.append(math.log2(w))
        if len(xs) < 2:
            return None
        return joint_line(xs, ys, np.array(us))

    def lr(self, trials: Sequence[FrozenTrial], width: int) -> float | None:
        """The lr for a new trial of ``width`` given the study's ``trials``; None while the width
        is in its start-up or there is no line (the caller samples at random then)."""
        held = sum(
            1
            for t in trials
            if t.params.get(WIDTH) == width
            and not is_verification(t)
            and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        if held < self._startup:
            return None
        fit = self.line(trials)
        if fit is None:
            return None
        if self._rng.random() < EXPLORE:
            return float(2.0 ** self._rng.uniform(self._lo, self._hi))
        slope, intercept = fit
        centre = intercept + slope * math.log2(width)
        x = float(np.clip(self._rng.normal(centre, SPREAD_LOG2), self._lo, self._hi))
        return float(2.0**x)
