"""What a report writes: its analysis of a study (:class:`StudyReport`), the CSV and JSON
files, the figures, the dashboard's note and figure, and the self-contained HTML page."""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from study._errors import UserError
from study.analysis import (
    Fit,
    StudyReport,
    analyze,
    headline,
    in_plain_words,
    points_from_trials,
)
from study.extrapolate import Prediction, extrapolation_json, extrapolation_words, predict
from study.importances import PendingImportances
from study.interaction import variance_shares
from study.names import LR, SPACE, WIDTH
from study.report_note import note_markdown, provenance, provenance_html
from study.report_table import trials_table_html
from study.verification import Verification, verification_points, verified_widths

__all__ = [
    "DASHBOARD_FIGURE_ID",
    "analyse_study",
    "dashboard_figures",
    "write_report",
]


# The one figure saved into the study for optuna-dashboard (see figures_grid.plotly_answer).
DASHBOARD_FIGURE_ID = "lr_star_vs_width"


def dashboard_figures(rep: StudyReport) -> dict[str, Any]:
    """The figure a report (and the live answer) saves into the study, by id: lr* vs width
    beside the loss over width x lr with lr* on it."""
    from study import figures_grid

    panel = (rep.name, rep.points, rep.fit, rep.lr_range)
    return {DASHBOARD_FIGURE_ID: figures_grid.plotly_answer(panel, _verifications(rep))}


def _verifications(rep: StudyReport) -> list[tuple[Prediction, Verification | None]]:
    """Each width the study was verified at (``study.predict --verify``): the prediction from
    the study's fit now, and what its trials measured (None before any finished)."""
    out: list[tuple[Prediction, Verification | None]] = []
    space = rep.study.user_attrs.get(SPACE) or {}
    base = (space.get("model") or {}).get("base_width") or min(rep.widths)
    trials = rep.study.get_trials(deepcopy=False)
    for width in verified_widths(rep.study.user_attrs):
        try:
            pred = predict(rep.fit, width, base)
        except ValueError:  # no fit (yet): nothing to compare with
            continue
        points = verification_points(trials, width)
        out.append((pred, Verification(points, pred, rep.lr_range) if points else None))
    return out


def _space_of(
    study: optuna.Study, trials: list[FrozenTrial]
) -> tuple[list[int], tuple[float, float]]:
    """Widths and lr range from the stored space, or from the trials of a foreign study."""
    space = study.user_attrs.get(SPACE)
    if space:
        return list(space["model"]["widths"]), (space["lr"]["low"], space["lr"]["high"])
    widths = sorted({int(t.params[WIDTH]) for t in trials if WIDTH in t.params})
    dists = [t.distributions[LR] for t in trials if LR in t.distributions]
    if not widths or not dists:
        raise UserError(
            f"study {study.study_name!r} has no '{WIDTH}' and '{LR}' parameters to analyse"
        )
    return widths, (dists[0].low, dists[0].high)  # type: ignore[attr-defined]


def analyse_study(study: optuna.Study, n_bootstrap: int = 1000) -> StudyReport:
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not finished:
        raise UserError(
            f"study {study.study_name!r} has no finished trials yet: run python -m study.run first"
        )
    widths, lr_range = _space_of(study, trials)
    points = points_from_trials(trials)
    fit = analyze(points, widths, lr_range, n_bootstrap=n_bootstrap)
    return StudyReport(study, widths, lr_range, points, fit)


def _short(x: float | None) -> str:
    """A number as a reader reads it: 3 significant figures (the CSV files keep 6)."""
    return "" if x is None else f"{x:.3g}"


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.6g}"


def _write_summary(path: Path, fit: Fit) -> None:
    cols = [
        "width",
        "lr_star",
        "lr_low",
        "lr_high",
        "best_value",
        "trials",
        "complete",
        "pruned",
        "diverged",
        "at_edge",
        "method",
        "note",
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for e in fit.widths:
            w.writerow(
                [
                    e.width,
                    _fmt(e.lr_star),
                    _fmt(e.lr_low),
                    _fmt(e.lr_high),
                    _fmt(e.best_value),
                    e.trials,
                    e.complete,
                    e.pruned,
                    e.diverged,
                    str(e.at_edge).lower(),
                    e.method or "",
                    e.note,
                ]
            )


def _write_trials(path: Path, trials: list[FrozenTrial]) -> None:
    attr_keys = sorted({k for t in trials for k in t.user_attrs})
    cols = [
        "number",
        "state",
        "value",
        "width",
        "lr",
        "datetime_start",
        "datetime_complete",
        "duration_s",
        *attr_keys,
        "intermediate_values",
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for t in trials:
            dur = t.duration.total_seconds() if t.duration else None
            curve = {
                str(k): v if math.isfinite(v) else str(v)
                for k, v in sorted(t.intermediate_values.items())
            }
            w.writerow(
                [
                    t.number,
                    t.state.name,
                    _fmt(t.value),
                    t.params.get(WIDTH, ""),
                    _fmt(t.params.get(LR)),
                    t.datetime_start or "",
                    t.datetime_complete or "",
                    _fmt(dur),
                    *[t.user_attrs.get(k, "") for k in attr_keys],
                    json.dumps(curve),
                ]
            )


def _best_curves(rep: StudyReport) -> dict[int, list[float]]:
    curves: dict[int, list[float]] = {}
    for e in rep.fit.widths:
        done = [
            t
            for t in rep.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.params.get(WIDTH) == e.width and t.value is not None
        ]
        if done:
            best = min(done, key=lambda t: t.value)  # type: ignore[arg-type,return-value]
            curves[e.width] = [
                best.intermediate_values[k] for k in sorted(best.intermediate_values)
            ]
    return curves


def _html(
    reports: Sequence[StudyReport],
    figures: list[tuple[str, Any]],
    out: Path,
    origin: dict[str, Any] | None = None,
) -> Path:
    import plotly.io as pio

    parts = []
    for i, (title, fig) in enumerate(figures):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(
            pio.to_html(
                fig, full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False}
            )
        )
    tables = []
    for rep in reports:
        rows = "".join(
            f"<tr><td>{e.width}</td><td>{_short(e.lr_star)}</td><td>{_short(e.lr_low)}</td>"
            f"<td>{_short(e.lr_high)}</td><td>{_short(e.best_value)}</td><td>{e.trials}</td>"
            f"<td>{e.complete}</td><td>{e.pruned}</td><td>{e.diverged}</td>"
            f"<td>{'yes' if e.at_edge else ''}</td><td>{html.escape(e.note)}</td></tr>"
            for e in rep.fit.widths
        )
        tables.append(
            f"<h2>{html.escape(rep.name)}</h2>"
            f"<p><b>{html.escape(in_plain_words(rep.fit))}</b></p>"
            f"<p>{html.escape(headline(rep.fit, rep.name))}</p>"
            f"<p>{html.escape(rep.fit.note)}</p>"
            f"<p>{html.escape(extrapolation_words(rep.fit))}</p>"
            "<table><tr><th>width</th><th>lr*</th>"
            "<th>low</th><th>high</th><th>best loss</th><th>trials</th><th>complete</th>"
            "<th>pruned</th><th>diverged</th><th>at edge</th><th>note</th></tr>"
            f"{rows}</table>"
        )
    doc = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        # Counts script errors in the page itself, so a headless browser can check for them.
        "<script>window.onerror=function(){var b=document.documentElement;"
        "b.dataset.jsErrors=(+(b.dataset.jsErrors||0))+1;};</script>"
        f"<title>width-lr-study: {html.escape(reports[0].name)}</title><style>"
        "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}</style></head><body>"
        "<h1>How does width change the optimal learning rate?</h1>"
        + (provenance_html(origin) if origin else "")
        + "".join(tables)
        + "".join(parts)
        + trials_table_html([(r.name, r.study.get_trials(deepcopy=False)) for r in reports])
        + "</body></html>"
    )
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


def write_report(
    rep: StudyReport,
    out: Path,
    storage_url: str,
    importances: PendingImportances,
    others: Sequence[StudyReport] = (),
    dashboard: bool = True,
) -> list[Path]:
    """Write every file of the report into ``out``; save the figure and note into the study.

    ``importances``: those of ``rep``'s study, started before (see :class:`PendingImportances`).
    """
    from study import figures, figures_grid, figures_plotly

    out.mkdir(parents=True, exist_ok=True)
    _write_summary(out / "summary.csv", rep.fit)
    fit_json = rep.fit.to_json()
    fit_json["study"] = rep.name
    fit_json["lr_range"] = list(rep.lr_range)
    fit_json["headline"] = headline(rep.fit, rep.name)
    origin = provenance(rep, storage_url)
    fit_json["provenance"] = origin
    fit_json["variance_shares"] = variance_shares(rep.points)
    fit_json["extrapolation"] = extrapolation_json(rep.fit)
    verified = _verifications(rep)
    fit_json["verifications"] = [
        {**pred.to_json(), **(v.to_json() if v else {})} for pred, v in verified
    ]
    (out / "fit.json").write_text(json.dumps(fit_json, indent=2) + "\n")
    _write_trials(out / "trials.csv", rep.study.get_trials(deepcopy=False))
    written = [out / "summary.csv", out / "fit.json", out / "trials.csv"]
    panels = [(r.name, r.points, r.fit, r.lr_range) for r in (rep, *others)]
    if others:
        compare = {
            r.name: {**r.fit.to_json(), "headline": headline(r.fit, r.name)} for r in (rep, *others)
        }
        (out / "compare.json").write_text(json.dumps(compare, indent=2) + "\n")
        written.append(out / "compare.json")
    interactive: list[tuple[str, Any]] = [
        ("Optimal learning rate vs width", figures_plotly.plotly_lr_star(panels, verified)),
        ("Loss over width × learning rate, with lr*", figures_grid.plotly_landscape(panels[0])),
    ]
    if shares := variance_shares(rep.points):
        figure = figures_grid.plotly_variance_shares(shares)
        interactive.append(("What moves the loss", figure))
    interactive += [
        ("Validation loss vs learning rate", figures_plotly.plotly_loss_vs_lr(panels)),
        (
            "Validation loss per epoch",
            figures_grid.plotly_curves(rep.study.get_trials(deepcopy=False), rep.widths),
        ),
    ]
    complete = rep.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if dashboard:
        from study.dashboard import save_to_dashboard

        save_to_dashboard(rep.study, dashboard_figures(rep), note_markdown(rep, storage_url))
    # Last, the figures that wait for the importances: the PNGs' last, then the page's.
    written += figures.save_png_figures(out, panels, _best_curves(rep), importances.result)
    ped_anova = importances.result()[0].get("PED-ANOVA")
    if len(complete) >= 2 and ped_anova:
        figure = figures_plotly.plotly_importances(ped_anova, rep.study)
        at = 3 if shares else 2
        interactive.insert(at, ("Parameter importance (PED-ANOVA, main effects only)", figure))
    written.append(_html([rep, *others], interactive, out, origin))
    return written
