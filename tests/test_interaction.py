"""What moves the loss (study.interaction) and the figures drawn over width x lr."""

from __future__ import annotations

import math

import numpy as np

from study.analysis import Point, analyze
from study.figures_grid import plotly_landscape, plotly_variance_shares
from study.figures_plotly import plotly_lr_star
from study.interaction import INTERACTION, variance_shares

WIDTHS = [32, 64, 128, 256, 512, 1024]


def _valleys(alpha: float, seed: int = 0) -> list[Point]:
    """Loss valleys in log2 lr whose centre moves as width^-alpha, with noise."""
    rng = np.random.default_rng(seed)
    points = []
    for w in WIDTHS:
        centre = -4 - alpha * math.log2(w / 32)
        for _ in range(30):
            x = rng.uniform(-14, 0)
            loss = math.exp(0.1 * (x - centre) ** 2 + 0.03 * math.log2(w) + rng.normal(0, 0.05))
            points.append(Point(w, 2.0**x, loss, "complete"))
    return points


def test_a_moving_optimum_is_an_interaction_and_a_fixed_one_is_not() -> None:
    moving = variance_shares(_valleys(0.7))
    fixed = variance_shares(_valleys(0.0))
    assert 0.8 < sum(moving.values()) <= 1.0 + 1e-9  # lrs drawn alike at every width
    assert moving[INTERACTION] > 0.2  # lr* moves 3.5 log2 units across the widths
    assert fixed[INTERACTION] < 0.05  # the same valley at every width: lr alone
    assert fixed["lr"] > 0.9


def test_too_little_spread_has_no_shares() -> None:
    one_width = [p for p in _valleys(0.5) if p.width == 64]
    assert variance_shares(one_width) == {}
    assert variance_shares([]) == {}
    diverged = [Point(p.width, p.lr, math.inf, "diverged") for p in _valleys(0.5)]
    assert variance_shares(diverged) == {}


def test_the_figures_put_width_on_a_log_axis_ticked_at_the_widths() -> None:
    points = _valleys(0.7)
    fit = analyze(points, WIDTHS, (1e-4, 1.0), n_bootstrap=50)
    panel = ("planted", points, fit, (1e-4, 1.0))
    for fig in (plotly_lr_star([panel]), plotly_landscape(panel)):
        axis = fig.layout.xaxis
        assert axis.type == "log" and list(axis.tickvals) == WIDTHS
        assert fig.layout.yaxis.type == "log"
        # Every trace is in the legend or grouped with one that is: each marker is explained.
        assert all(t.name for t in fig.data)
    landscape = plotly_landscape(panel)
    line = next(t for t in landscape.data if t.name and t.name.startswith("lr* ∝ width^-α"))
    assert list(line.x) == fit.used_widths
    shares = plotly_variance_shares(variance_shares(points))
    assert set(shares.data[0].y) == {"width", "lr", INTERACTION}
