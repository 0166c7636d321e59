"""The figures a researcher expects, as PNG files (matplotlib); :mod:`study.figures_plotly`
draws the interactive ones.

Both draw from the same inputs: the finished trials as :class:`~study.analysis.Point`
and the :class:`~study.analysis.Fit`. Diverged trials are red crosses at the top of the loss axis;
pruned trials are hollow markers; the lr range is drawn as dashed lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from study.analysis import Fit, Point  # noqa: E402

__all__ = ["Panel", "binned_min", "colors_of", "save_png_figures"]

# (label, points, fit, lr range): one study's worth of what the figures draw.
Panel = tuple[str, list[Point], Fit, tuple[float, float]]


def colors_of(widths: Sequence[int]) -> dict[int, str]:
    cmap = plt.get_cmap("viridis")
    n = max(len(widths) - 1, 1)
    return {w: matplotlib.colors.to_hex(cmap(0.9 * i / n)) for i, w in enumerate(widths)}


def binned_min(points: list[Point], bin_log2: float = 1.0) -> tuple[list[float], list[float]]:
    """The lower envelope of (lr, loss): the best loss in each bin of ``bin_log2`` in lr."""
    best: dict[int, Point] = {}
    for p in points:
        k = math.floor(math.log2(p.lr) / bin_log2)
        if k not in best or p.value < best[k].value:
            best[k] = p
    pts = [best[k] for k in sorted(best)]
    return [p.lr for p in pts], [p.value for p in pts]


def _loss_vs_lr(ax: Axes, panel: Panel) -> None:
    label, points, fit, (low, high) = panel
    widths = [e.width for e in fit.widths]
    colors = colors_of(widths)
    for est in fit.widths:
        c = colors[est.width]
        comp = [p for p in points if p.width == est.width and p.state == "complete"]
        pruned = [p for p in points if p.width == est.width and p.state == "pruned"]
        ax.scatter([p.lr for p in comp], [p.value for p in comp], s=10, color=c, alpha=0.5)
        ok = [p for p in pruned if math.isfinite(p.value)]
        ax.scatter(
            [p.lr for p in ok],
            [p.value for p in ok],
            s=14,
            facecolors="none",
            edgecolors=c,
            alpha=0.5,
            linewidths=0.7,
        )
        if comp:
            ax.plot(*binned_min(comp), color=c, lw=1.4, label=f"width {est.width}")
        if est.lr_star is not None:
            ax.errorbar(
                [est.lr_star],
                [est.best_value],
                xerr=np.array(est.lr_errors()).reshape(2, 1),
                fmt="*",
                ms=13,
                color=c,
                mec="black",
                mew=0.6,
                capsize=3,
                zorder=5,
            )
    div = [p for p in points if p.state == "diverged"]
    if div:
        ax.scatter(
            [p.lr for p in div],
            [0.97] * len(div),
            marker="x",
            color="red",
            s=30,
            transform=ax.get_xaxis_transform(),
            label="diverged",
            zorder=6,
        )
    for bound in (low, high):
        ax.axvline(bound, color="gray", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("best validation loss")
    ax.set_title(f"{label}: validation loss vs lr (★ lr* with interval)")
    ax.legend(fontsize=7, loc="lower left")


def _log_axes(ax: Axes, has_data: bool, y: bool = True) -> bool:
    """Width on a log2 x axis (and a log y axis): only with data, which an empty log axis has
    none of (matplotlib refuses to save it). Returns ``has_data``."""
    if has_data:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        if y:
            ax.set_yscale("log")
    return has_data


def _lr_star(ax: Axes, panels: Sequence[Panel]) -> None:
    markers = ["o", "s", "^", "D"]
    line_colors = ["C0", "C3", "C2", "C1"]
    for i, (label, _, fit, _) in enumerate(panels):
        c = line_colors[i % 4]
        used = [e for e in fit.widths if e.lr_star is not None]
        for e in used:
            ax.errorbar(
                [e.width],
                [e.lr_star],
                yerr=np.array(e.lr_errors()).reshape(2, 1),
                fmt=markers[i % 4],
                color=c,
                capsize=3,
                mfc="white" if e.at_edge else c,
            )
        if fit.alpha is not None:
            w = np.array(fit.used_widths, dtype=float)
            ax.plot(
                w,
                2.0**fit.intercept_log2 * w ** (-fit.alpha),
                color=c,
                lw=1.5,
                label=f"{label}: α = {fit.alpha:.2f} [{fit.alpha_low:.2f}, {fit.alpha_high:.2f}]",
            )
            ax.fill_between(
                w, [b[0] for b in fit.band], [b[1] for b in fit.band], color=c, alpha=0.15
            )
        else:
            ax.plot([], [], color=c, label=f"{label}: no fit ({fit.note})")
    if not _log_axes(ax, any(e.lr_star is not None for _, _, fit, _ in panels for e in fit.widths)):
        ax.text(
            0.5,
            0.5,
            "no lr* yet: no width has enough complete trials",
            ha="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("width")
    ax.set_ylabel("optimal learning rate lr*")
    ax.set_title("lr* vs width (fit lr* ∝ width^-α, 95% band; hollow = at edge)")
    ax.legend(fontsize=8)


def _isolation(ax: Axes, panels: Sequence[Panel]) -> None:
    for i, (label, _, fit, _) in enumerate(panels):
        est = [e for e in fit.widths if e.best_value is not None]
        ax.plot(
            [e.width for e in est], [e.best_value for e in est], "o-", color=f"C{i}", label=label
        )
    _log_axes(
        ax, any(e.best_value is not None for _, _, fit, _ in panels for e in fit.widths), y=False
    )
    ax.set_xlabel("width")
    ax.set_ylabel("best validation loss")
    ax.set_title("isolation plot: best loss per width (lr tuned per width)")
    ax.legend(fontsize=8)


def _curves(ax: Axes, curves: dict[int, list[float]], widths: Sequence[int]) -> None:
    colors = colors_of(widths)
    for w in widths:
        if w in curves:
            ax.plot(range(1, len(curves[w]) + 1), curves[w], color=colors[w], label=f"width {w}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation loss")
    ax.set_title("training curves of the best trial per width")
    ax.legend(fontsize=7)


def _importance(ax: Axes, importances: dict[str, dict[str, float]], note: str) -> None:
    if not importances:
        ax.text(0.5, 0.5, note or "no importances", ha="center", va="center", wrap=True)
        ax.set_axis_off()
        return
    params = sorted({p for v in importances.values() for p in v})
    x = np.arange(len(params))
    width = 0.8 / len(importances)
    for i, (name, imp) in enumerate(importances.items()):
        ax.bar(x + i * width, [imp.get(p, 0.0) for p in params], width, label=name)
    ax.set_xticks(x + width * (len(importances) - 1) / 2, params)
    ax.set_ylabel("importance")
    ax.set_title("parameter importance (complete trials)")
    ax.legend(fontsize=8)


def _contour(ax: Axes, points: list[Point]) -> None:
    comp = [p for p in points if p.state == "complete"]
    x = np.log10([p.lr for p in comp])
    y = np.log2([p.width for p in comp])
    z = np.log10([p.value for p in comp])
    if len(comp) >= 4 and np.ptp(y) > 0 and np.ptp(x) > 0:
        tc = ax.tricontourf(x, y, z, levels=14, cmap="viridis_r")
        plt.colorbar(tc, ax=ax, label="log10 best validation loss")
    ax.scatter(x, y, s=6, color="black", alpha=0.5)
    widths = sorted({p.width for p in comp})
    ax.set_yticks(np.log2(widths), [str(w) for w in widths])
    ax.set_xlabel("log10 learning rate")
    ax.set_ylabel("width")
    ax.set_title("width × lr (complete trials)")


def save_png_figures(
    out: Path,
    panels: Sequence[Panel],
    curves: dict[int, list[float]],
    importances: Callable[[], tuple[dict[str, dict[str, float]], str]],
) -> list[Path]:
    """Write the PNG figures of the first panel (and the side-by-side ones if several).

    ``importances`` gives the importances by evaluator and a note; it is called last, for the
    last figure, so that they can be computed elsewhere meanwhile.
    """
    label, points, fit, _ = panels[0]
    widths = [e.width for e in fit.widths]
    jobs = {
        "loss_vs_lr.png": (lambda ax: _loss_vs_lr(ax, panels[0]), (8, 5.5)),
        "lr_star_vs_width.png": (lambda ax: _lr_star(ax, panels[:1]), (7, 5)),
        "isolation.png": (lambda ax: _isolation(ax, panels[:1]), (6.5, 4.5)),
        "training_curves.png": (lambda ax: _curves(ax, curves, widths), (7, 4.5)),
        "contour.png": (lambda ax: _contour(ax, points), (7, 5)),
        "importance.png": (lambda ax: _importance(ax, *importances()), (6, 4.5)),
    }
    written = []
    if len(panels) > 1:
        fig, ax = plt.subplots(figsize=(7.5, 5.5), layout="constrained")
        _lr_star(ax, panels)
        fig.savefig(out / "compare_lr_star_vs_width.png", dpi=110)
        plt.close(fig)
        fig, axes = plt.subplots(
            1, len(panels), figsize=(7 * len(panels), 5.5), layout="constrained", sharey=True
        )
        for ax, panel in zip(axes, panels, strict=True):
            _loss_vs_lr(ax, panel)
        fig.savefig(out / "compare_loss_vs_lr.png", dpi=110)
        plt.close(fig)
        written += [out / "compare_lr_star_vs_width.png", out / "compare_loss_vs_lr.png"]
    for name, (draw, size) in jobs.items():
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        draw(ax)
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    return written
