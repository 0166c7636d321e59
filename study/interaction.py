"""How much of the loss's variation is width, lr, and their interaction: the question itself.

Optuna's importance evaluators (PED-ANOVA, fANOVA as Optuna reports them) give one number per
parameter: main effects. The study's question is an interaction: a good lr at one width is a
bad one at another exactly when lr* moves with width. This splits the variation of the COMPLETE
trials' log loss over a grid of cells (each width x a bin of ``bin_log2`` in log2 lr) into

* width: how much the widths differ on average,
* lr: how much the lr bins differ on average,
* width x lr: what the two additive parts leave of the cell means, the interaction,

by a weighted two-way fit of the cell means (each cell weighted by its trials; backfitting, as
unbalanced two-way ANOVA does). Each is a share of the variation between cells: the
interaction is what the additive fit leaves; width and lr are each what that factor adds to a
fit holding the other one alone (type II sums of squares). Where a study's trials put lr and
width together (each width's lrs near its own lr*), part of the variation belongs to either
factor and neither share claims it: the three then add up to less than 1. The scatter of
trials within a cell (seeds, epochs, noise) is left out of all three.
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
    """Shares of ``width``, ``lr`` and :data:`INTERACTION` in the variation of log loss between
    cells (at most 1 together); empty where the complete trials span fewer than two widths or
    lr bins."""
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
    additive = grand + a[:, None] + b[None, :]
    filled = n > 0
    ss_between = float((n * (m - grand) ** 2)[filled].sum())
    ss_inter = float((n * (m - additive) ** 2)[filled].sum())
    # One factor alone: each cell at its width's (or lr bin's) mean.
    width_mean = (n * m).sum(1) / np.maximum(n.sum(1), 1e-12)
    lr_mean = (n * m).sum(0) / np.maximum(n.sum(0), 1e-12)
    ss_res_width = float((n * (m - width_mean[:, None]) ** 2)[filled].sum())
    ss_res_lr = float((n * (m - lr_mean[None, :]) ** 2)[filled].sum())
    if not ss_between > 0:
        return {}
    # Type II: what each factor adds to a model holding the other one.
    return {
        "width": max(0.0, ss_res_lr - ss_inter) / ss_between,
        "lr": max(0.0, ss_res_width - ss_inter) / ss_between,
        INTERACTION: ss_inter / ss_between,
    }
