"""The report's interactive figures (plotly), for the HTML page and optuna-dashboard: the same
inputs and markers as the PNGs of :mod:`study.figures`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study.figures import Panel, binned_min, colors_of

__all__ = [
    "width_axis",
    "plotly_importances",
    "plotly_loss_vs_lr",
    "plotly_lr_star",
]


def plotly_importances(importances: dict[str, float], study: optuna.Study) -> go.Figure:
    """Optuna's ``plot_param_importances`` figure of ``study``, drawn from ``importances``
    (``optuna.importance.get_param_importances``' result) computed elsewhere: calling it here
    would import scikit-learn (optuna.importance does) and compute them again."""
    items = list(reversed(importances.items()))
    kinds = {}
    for t in study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            kinds.setdefault(name, type(dist).__name__)
    names = study.metric_names
    bar = go.Bar(
        x=[v for _, v in items],
        y=[p for p, _ in items],
        name=names[0] if names is not None else "Objective Value",
        text=[f"{v:.2f}" if v >= 0.01 else "<0.01" for _, v in items],
        textposition="outside",
        cliponaxis=False,
        hovertemplate=[f"{p} ({kinds[p]}): {v}<extra></extra>" for p, v in items],
        orientation="h",
    )
    layout = go.Layout(
        title="Hyperparameter Importances",
        xaxis={"title": "Hyperparameter Importance"},
        yaxis={"title": "Hyperparameter"},
    )
    return go.Figure([bar], layout)


def width_axis(fig: go.Figure, widths: Sequence[int], **where: int) -> None:
    """A log axis ticked at the widths themselves (plotly's own log ticks read 2, 5, 100)."""
    fig.update_xaxes(
        type="log", title="width", tickvals=list(widths), ticktext=[str(w) for w in widths], **where
    )


def plotly_lr_star(panels: Sequence[Panel], predictions: Sequence[Any] = ()) -> go.Figure:
    """lr* vs width on log-log axes with the fit and its band (saved into the dashboard too).

    Every marker is in the legend: a filled circle is a width's lr* with its 95% interval, a
    hollow one an lr* at an edge of the evidence or range (not to be trusted), the line the
    fitted power law, the shaded band its 95% interval. ``predictions``: (Prediction,
    Verification or None) pairs of the first panel's study (:mod:`study.verification`): the
    line extended to each predicted width, a diamond with its prediction interval, and the lr*
    measured there (a star with its interval) once verified.
    """
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]
    widths: set[int] = set()
    for i, (label, _, fit, _) in enumerate(panels):
        c = palette[i % 4]
        widths.update(e.width for e in fit.widths)
        for at_edge in (False, True):
            used = [e for e in fit.widths if e.lr_star is not None and e.at_edge == at_edge]
            if not used:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[e.width for e in used],
                    y=[e.lr_star for e in used],
                    mode="markers",
                    name=f"{label}: lr* at an edge (widen the range)"
                    if at_edge
                    else f"{label}: lr*",
                    legendgroup=label,
                    marker=dict(color=c, size=10, symbol="circle-open" if at_edge else "circle"),
                    error_y=dict(
                        type="data",
                        symmetric=False,
                        array=[e.lr_errors()[1] for e in used],
                        arrayminus=[e.lr_errors()[0] for e in used],
                    ),
                    hovertemplate="width %{x}<br>lr* %{y:.3g}<extra></extra>",
                )
            )
        if fit.alpha is not None:
            w = fit.used_widths
            fig.add_trace(
                go.Scatter(
                    x=w + w[::-1],
                    y=[b[1] for b in fit.band] + [b[0] for b in fit.band][::-1],
                    mode="lines",
                    fill="toself",
                    fillcolor=c,
                    opacity=0.15,
                    line=dict(width=0),
                    name=f"{label}: 95% band of the fit",
                    legendgroup=label,
                    hoverinfo="skip",
                )
            )
            fig.add_trace(
                go.Scatter(
                    x=w,
                    y=[2.0**fit.intercept_log2 * x ** (-fit.alpha) for x in w],
                    mode="lines",
                    line=dict(color=c),
                    legendgroup=label,
                    name=f"{label}: lr* ∝ width^-α, α = {fit.alpha:.2f} "
                    f"[{fit.alpha_low:.2f}, {fit.alpha_high:.2f}]",
                )
            )
    for pred, verification in predictions:
        fit = panels[0][2]
        widths.add(pred.width)
        last = fit.used_widths[-1] if pred.width > fit.used_widths[-1] else fit.used_widths[0]
        fig.add_trace(
            go.Scatter(
                x=[last, pred.width],
                y=[2.0**fit.intercept_log2 * x ** (-fit.alpha) for x in (last, pred.width)],
                mode="lines",
                line=dict(color="black", dash="dot"),
                name="the fit, extended",
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[pred.width],
                y=[pred.lr_pred],
                mode="markers",
                marker=dict(symbol="diamond", size=11, color="black"),
                error_y=dict(
                    type="data",
                    symmetric=False,
                    array=[pred.lr_high - pred.lr_pred],
                    arrayminus=[pred.lr_pred - pred.lr_low],
                    color="black",
                ),
                name=f"predicted at width {pred.width} (95% prediction interval)",
                hovertemplate="predicted lr* %{y:.3g}<extra></extra>",
            )
        )
        e = verification.estimate if verification is not None else None
        if e is not None and e.lr_star is not None:
            fig.add_trace(
                go.Scatter(
                    x=[pred.width],
                    y=[e.lr_star],
                    mode="markers",
                    marker=dict(symbol="star", size=14, color="#2ca02c"),
                    error_y=dict(
                        type="data",
                        symmetric=False,
                        array=[e.lr_errors()[1]],
                        arrayminus=[e.lr_errors()[0]],
                        color="#2ca02c",
                    ),
                    name=f"measured at width {pred.width} (verification, 95% interval)",
                    hovertemplate="measured lr* %{y:.3g}<extra></extra>",
                )
            )
    width_axis(fig, sorted(widths))
    fig.update_yaxes(type="log", title="optimal learning rate lr*", exponentformat="power")
    fig.update_layout(
        title="Optimal learning rate vs width",
        template="plotly_white",
        legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
        margin=dict(b=40),
    )
    return fig


def plotly_loss_vs_lr(panels: Sequence[Panel]) -> go.Figure:
    """Validation loss vs lr, one curve per width, one panel per study; diverged as red ✕."""
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], shared_yaxes=True
    )
    for col, (_, points, fit, (low, high)) in enumerate(panels, start=1):
        colors = colors_of([e.width for e in fit.widths])
        for est in fit.widths:
            c = colors[est.width]
            mine = [p for p in points if p.width == est.width]
            comp = [p for p in mine if p.state == "complete"]
            pruned = [p for p in mine if p.state == "pruned" and math.isfinite(p.value)]
            group = f"w{est.width}"
            show = col == 1
            fig.add_trace(
                go.Scatter(
                    x=[p.lr for p in comp],
                    y=[p.value for p in comp],
                    mode="markers",
                    marker=dict(color=c, size=5, opacity=0.6),
                    legendgroup=group,
                    showlegend=False,
                    text=[f"trial {p.number}" for p in comp],
                    hovertemplate="%{text}<br>lr %{x:.3g}<br>loss %{y:.4f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=[p.lr for p in pruned],
                    y=[p.value for p in pruned],
                    mode="markers",
                    marker=dict(color=c, size=6, symbol="circle-open"),
                    legendgroup=group,
                    showlegend=False,
                    hovertemplate="pruned<br>lr %{x:.3g}<extra></extra>",
                ),
                row=1,
                col=col,
            )
            if comp:
                bx, by = binned_min(comp)
                fig.add_trace(
                    go.Scatter(
                        x=bx,
                        y=by,
                        mode="lines",
                        line=dict(color=c),
                        name=f"width {est.width}",
                        legendgroup=group,
                        showlegend=show,
                    ),
                    row=1,
                    col=col,
                )
            if est.lr_star is not None:
                fig.add_trace(
                    go.Scatter(
                        x=[est.lr_star],
                        y=[est.best_value],
                        mode="markers",
                        legendgroup=group,
                        marker=dict(symbol="star", size=14, color=c, line=dict(width=1)),
                        showlegend=False,
                        error_x=dict(
                            type="data",
                            symmetric=False,
                            array=[est.lr_errors()[1]],
                            arrayminus=[est.lr_errors()[0]],
                        ),
                        hovertemplate=f"width {est.width}: lr* %{{x:.3g}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
        finite = [p.value for p in points if math.isfinite(p.value) and p.value > 0]
        top = max(finite) if finite else 10.0
        div = [p for p in points if p.state == "diverged"]
        fig.add_trace(
            go.Scatter(
                x=[p.lr for p in div],
                y=[top] * len(div),
                mode="markers",
                name="diverged",
                marker=dict(symbol="x", color="red", size=9),
                showlegend=col == 1,
                text=[f"trial {p.number}, width {p.width}" for p in div],
                hovertemplate="diverged: %{text}<br>lr %{x:.3g}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        if col == 1:  # the markers drawn per width, explained once
            for name, marker in (
                ("pruned (its loss when pruned)", dict(symbol="circle-open", color="grey", size=6)),
                ("★ lr* with its 95% interval", dict(symbol="star", color="grey", size=12)),
            ):
                fig.add_trace(
                    go.Scatter(x=[None], y=[None], mode="markers", marker=marker, name=name),
                    row=1,
                    col=col,
                )
        for bound in (low, high):
            fig.add_vline(x=bound, line=dict(color="gray", dash="dash", width=1), row=1, col=col)
        fig.update_xaxes(type="log", title="learning rate", row=1, col=col)
    fig.update_yaxes(type="log", title="best validation loss", row=1, col=1)
    fig.update_layout(
        title="Validation loss vs learning rate (★ lr* with interval)",
        template="plotly_white",
        height=520,
    )
    return fig
