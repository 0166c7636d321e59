"""How much of the loss's variation is width, lr, and their interaction: the question itself.

Optuna's importance evaluators (PED-ANOVA, fANOVA as Optuna reports them) give one number per
parameter: main effects. The study's question is an interaction: a good lr at one width is a
bad one at another exactly when lr* moves with width. This splits the variation of the COMPLETE
trials' log loss over a grid of cells (each width x a bin of ``bin_log2`` in log2 lr) into

* width: how much the widths differ on average,
* lr: how much the lr bins differ on average,
* width x lr: what the two additive parts leave of the cell means, the interaction,

by a weighted two-way fit of the cell means (each cell weighted by its trials; backfitting, as
unbalanced two-way ANOVA does), and returns the three sums of squares as shares of their total.
The scatter of trials within a cell (seeds, epochs, noise) is left out of all three.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from study.analysis import Point

__all__ = ["BIN_LOG2", "INTERACTION", "variance_shares"]

BIN_LOG2 = 1.0  # lr bins one log2 unit wide (a factor of 2)
INTERACTION = "width × lr"


def variance_shares(points: list[Point], bin_log2: float = BIN_LOG2) -> dict[str, float]:
    """Shares of ``width``, ``lr`` and :data:`INTERACTION` in the explained variation of log loss
    (they sum to 1); empty where the complete trials span fewer than two widths or lr bins."""
    cells: dict[tuple[int, int], list[float]] = defaultdict(list)
    for p in points:
        if p.state == "complete" and math.isfinite(p.value) and p.value > 0:
            cells[(p.width, math.floor(math.log2(p.lr) / bin_log2))].append(math.log(p.value))
    widths = sorted({w for w, _ in cells})
    bins = sorted({b for _, b in cells})
    if len(widths) < 2 or len(bins) < 2:
        return {}
    wi = {w: i for i, w in enumerate(widths)}
    bi = {b: j for j, b in enumerate(bins)}
    n = np.zeros((len(widths), len(bins)))
    m = np.zeros_like(n)
    for (w, b), ys in cells.items():
        n[wi[w], bi[b]] = len(ys)
        m[wi[w], bi[b]] = np.mean(ys)
    grand = (n * m).sum() / n.sum()
    a = np.zeros(len(widths))
    b = np.zeros(len(bins))
    for _ in range(200):  # backfitting: each side's effect given the other's
        a_new = (n * (m - grand - b[None, :])).sum(1) / np.maximum(n.sum(1), 1e-12)
        b_new = (n * (m - grand - a_new[:, None])).sum(0) / np.maximum(n.sum(0), 1e-12)
        done = np.abs(a_new - a).max() + np.abs(b_new - b).max() < 1e-10
        a, b = a_new, b_new
        if done:
            break
    a -= (n.sum(1) * a).sum() / n.sum()  # centred: the grand mean holds the constant
    b -= (n.sum(0) * b).sum() / n.sum()
    ss_width = float((n.sum(1) * a**2).sum())
    ss_lr = float((n.sum(0) * b**2).sum())
    additive = grand + a[:, None] + b[None, :]
    ss_inter = float((n * (m - additive) ** 2).sum())
    total = ss_width + ss_lr + ss_inter
    if not total > 0:
        return {}
    return {"width": ss_width / total, "lr": ss_lr / total, INTERACTION: ss_inter / total}
