"""The figures of the loss over the whole width x lr plane: the landscape with lr* drawn on it,
what moves the loss (width, lr, their interaction), and every trial's curve coloured by width.
For the report's page and optuna-dashboard."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from study.figures import Panel, colors_of
from study.figures_plotly import width_axis
from study.names import DIVERGED, WIDTH, is_verification

__all__ = ["plotly_curves", "plotly_landscape", "plotly_variance_shares"]


def plotly_landscape(panel: Panel) -> go.Figure:
    """The loss over width x lr, both on log axes, with lr* and its fit drawn on it.

    The colour is the best validation loss among the complete trials in each cell (a width and
    one log2 unit of lr), filled in between cells; grey dots are the complete trials, red crosses
    the diverged ones, white circles each width's lr* with its interval, the white line the
    fitted lr* ∝ width^-α in orange and the dashed lines its 95% band.
    """
    label, points, fit, _ = panel
    widths = [e.width for e in fit.widths]
    comp = [
        p
        for p in points
        if p.state == "complete" and math.isfinite(p.value) and p.value > 0 and p.width in widths
    ]
    bins = sorted({math.floor(math.log2(p.lr)) for p in comp})
    fig = go.Figure()
    if comp and bins:
        grid = [[None] * len(widths) for _ in bins]
        for p in comp:
            j, i = bins.index(math.floor(math.log2(p.lr))), widths.index(p.width)
            grid[j][i] = p.value if grid[j][i] is None else min(grid[j][i], p.value)
        fig.add_trace(
            go.Contour(
                x=widths,
                y=[2.0 ** (b + 0.5) for b in bins],
                z=grid,
                connectgaps=True,
                colorscale="Viridis",  # low loss dark: the lines on it stand out
                colorbar=dict(title="best loss"),
                contours=dict(coloring="heatmap"),
                name="best loss",
                hovertemplate="width %{x}<br>lr %{y:.2g}<br>best loss %{z:.3g}<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[p.width for p in comp],
            y=[p.lr for p in comp],
            mode="markers",
            marker=dict(color="lightgrey", size=4),
            name="complete trial",
            text=[f"trial {p.number}: loss {p.value:.3g}" for p in comp],
            hovertemplate="%{text}<br>lr %{y:.3g}<extra></extra>",
        )
    )
    div = [p for p in points if p.state == "diverged"]
    fig.add_trace(
        go.Scatter(
            x=[p.width for p in div],
            y=[p.lr for p in div],
            mode="markers",
            marker=dict(color="red", symbol="x", size=7),
            name="diverged trial",
        )
    )
    used = [e for e in fit.widths if e.lr_star is not None]
    fig.add_trace(
        go.Scatter(
            x=[e.width for e in used],
            y=[e.lr_star for e in used],
            mode="markers",
            marker=dict(color="white", size=10, line=dict(color="black", width=1)),
            error_y=dict(
                type="data",
                symmetric=False,
                array=[e.lr_errors()[1] for e in used],
                arrayminus=[e.lr_errors()[0] for e in used],
                color="white",
            ),
            name="lr* per width (95% interval)",
        )
    )
    if fit.alpha is not None:
        w = fit.used_widths
        fig.add_trace(
            go.Scatter(
                x=w,
                y=[2.0**fit.intercept_log2 * x ** (-fit.alpha) for x in w],
                mode="lines",
                line=dict(color="#ff7f0e", width=3),
                name=f"lr* ∝ width^-α, α = {fit.alpha:.2f}",
            )
        )
        for k, side in enumerate(("low", "high")):
            fig.add_trace(
                go.Scatter(
                    x=w,
                    y=[b[k] for b in fit.band],
                    mode="lines",
                    line=dict(color="#ff7f0e", dash="dash", width=1.5),
                    name="95% band of the fit",
                    showlegend=side == "low",
                    legendgroup="band",
                )
            )
    width_axis(fig, widths)
    fig.update_yaxes(type="log", title="learning rate", exponentformat="power", dtick=1)
    fig.update_layout(
        title=f"{label}: loss over width × learning rate, with lr*",
        template="plotly_white",
        legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
        height=560,
    )
    return fig


def plotly_variance_shares(shares: dict[str, float]) -> go.Figure:
    """The width, lr and width × lr shares of the loss's variation (:mod:`study.interaction`)."""
    names = list(shares)[::-1]
    fig = go.Figure(
        go.Bar(
            x=[shares[k] for k in names],
            y=names,
            orientation="h",
            text=[f"{shares[k]:.0%}" for k in names],
            textposition="outside",
            cliponaxis=False,
            marker_color=["#d62728" if "×" in k else "#1f77b4" for k in names],
        )
    )
    fig.update_layout(
        title="What moves the loss: width, lr, and their interaction (lr* moving with width)",
        xaxis=dict(title="share of the variation of log loss between cells", tickformat=".0%"),
        template="plotly_white",
        height=320,
    )
    return fig


def plotly_curves(trials: list[FrozenTrial], widths: list[int]) -> go.Figure:
    """Validation loss per epoch of every finished trial, coloured by width: complete trials
    solid, pruned ones dotted, diverged ones red (their loss shown capped, as stored)."""
    colors = colors_of(widths)
    rank = {w: i for i, w in enumerate(widths)}  # the legend in width order
    fig = go.Figure()
    shown: set[str] = set()
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or not t.intermediate_values:
            continue
        if is_verification(t):  # study.predict's, at a width the study does not hold
            continue
        width = int(t.params.get(WIDTH, 0))
        diverged = bool(t.user_attrs.get(DIVERGED))
        if diverged:
            group, color, dash = "diverged", "red", "dot"
        elif t.state == TrialState.PRUNED:
            group, color, dash = f"width {width} (pruned)", colors.get(width, "grey"), "dot"
        else:
            group, color, dash = f"width {width}", colors.get(width, "grey"), "solid"
        steps = sorted(t.intermediate_values)
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=[t.intermediate_values[k] for k in steps],
                mode="lines",
                line=dict(color=color, width=1, dash=dash),
                opacity=0.6,
                name=group,
                legendgroup=group,
                showlegend=group not in shown,
                legendrank=1000
                if diverged
                else 10 * rank.get(width, 99) + (t.state != TrialState.COMPLETE),
                hovertemplate=f"trial {t.number}, width {width}<br>epoch %{{x}}<br>"
                "loss %{y:.4g}<extra></extra>",
            )
        )
        shown.add(group)
    fig.update_xaxes(title="epoch")
    fig.update_yaxes(type="log", title="validation loss")
    fig.update_layout(
        title="Validation loss per epoch, every trial, by width (dotted: pruned)",
        template="plotly_white",
        height=520,
    )
    return fig


def plotly_answer(panel: Panel, predictions: Sequence[Any] = ()) -> go.Figure:
    """The answer in one figure for optuna-dashboard, which draws a saved figure 450 px high in
    half its page: lr* vs width with its fit and band, beside the loss over width x lr with lr*
    on it; ``predictions`` as in :func:`~study.figures_plotly.plotly_lr_star`. Hover explains
    the markers; the report's page has each with its legend.

    One figure, because optuna-dashboard 0.21 lists a study's saved figures in the order of a
    Python set of their ids (``_custom_plot_data.list_graph_object_ids``): with several, the one
    on top changes from one start of the dashboard to the next.
    """
    from plotly.subplots import make_subplots

    from study.figures_plotly import plotly_lr_star

    label, _, fit, _ = panel
    widths = [e.width for e in fit.widths]
    fig = make_subplots(
        rows=1,
        cols=2,
        horizontal_spacing=0.16,
        subplot_titles=["lr* per width (95% interval), fit and band", "best loss; lr* and fit"],
    )
    lr_star = plotly_lr_star([panel], predictions)
    for trace in lr_star.data:
        fig.add_trace(trace, row=1, col=1)
    for trace in plotly_landscape(panel).data:
        if isinstance(trace, go.Contour):
            trace.colorbar = dict(title="loss", thickness=12)
        fig.add_trace(trace, row=1, col=2)
    fig.update_xaxes(lr_star.layout.xaxis, row=1, col=1)  # the widths, and any predicted
    width_axis(fig, widths, row=1, col=2)
    for col, title in ((1, "optimal lr*"), (2, "learning rate")):
        fig.update_yaxes(type="log", title=title, exponentformat="power", row=1, col=col)
    fig.update_yaxes(dtick=1, row=1, col=2)
    fig.update_xaxes(tickangle=0, title_standoff=4)
    if fit.alpha is not None:
        title = (
            f"{label}: lr* ∝ width^-α, α = {fit.alpha:.2f} "
            f"[{fit.alpha_low:.2f}, {fit.alpha_high:.2f}]"
        )
    else:
        title = f"{label}: no scaling fit yet"
    fig.update_layout(
        title=dict(text=title, x=0.01, y=0.97),
        template="plotly_white",
        showlegend=False,
        margin=dict(l=60, r=10, t=70, b=50),
    )
    return fig
