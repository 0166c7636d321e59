"""The report: ``python -m study.report --storage URL --study-name NAME --out DIR``.

Writes ``summary.csv``, ``fit.json``, ``trials.csv``, PNG figures and one self-contained
interactive ``report.html`` (plotly bundled, no network), and saves the lr*-vs-width figure and a
note into the study for optuna-dashboard. ``--compare OTHER`` puts a second study beside it (for
example SP vs muP). Nothing else is ever written to a study.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import html
import importlib
import json
import math
import multiprocessing
import re
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from study._errors import UserError
from study.analysis import Fit, Point, analyze, headline, points_from_trials
from study.sampling import LR, WIDTH
from study.storage import DEFAULT_STORAGE, open_storage
from study.urls import MaskingArgumentParser, mask_text, mask_url, require_existing

__all__ = [
    "PendingImportances",
    "StudyReport",
    "default_report_dir",
    "importances_of",
    "load_report_study",
    "main",
    "make_report",
    "write_report",
]

DASHBOARD_FIGURE_ID = "lr_star_vs_width"
# A study name is kept as its report folder's name only if it is made of these, ...
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_MAX_KEPT_NAME = 100  # ... no longer than this (a file name has at most 255 bytes), ...
# ... and does not end as a changed name does: "-" and the first hex digits of its SHA-256.
_HASH_HEX = 10
_HASHED_END = re.compile(rf"-[0-9a-f]{{{_HASH_HEX}}}$")


def default_report_dir(study_name: str) -> Path:
    """``reports/<folder>`` in the current folder, for a report with no ``--out``.

    A study name is any string (Optuna stores ``/tmp/x``, ``../../x`` or ``.hidden``, and anyone
    with the database can choose it), so it is never used as a path: the folder keeps only
    ``[A-Za-z0-9._-]`` (others become ``_``), never starts with ``.`` and is never empty. A name
    that had to change carries ``-`` and a hash of the real name, which a kept name never ends
    with, so two different names never share a folder.
    """
    safe = _UNSAFE_CHAR.sub("_", study_name)
    if (
        safe == study_name
        and safe
        and not safe.startswith(".")
        and len(safe) <= _MAX_KEPT_NAME
        and not _HASHED_END.search(safe)
    ):
        return Path("reports") / safe
    digest = hashlib.sha256(study_name.encode("utf-8", "surrogatepass")).hexdigest()
    stem = safe.lstrip(".")[:64] or "study"
    return Path("reports") / f"{stem}-{digest[:_HASH_HEX]}"


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


def _space_of(
    study: optuna.Study, trials: list[FrozenTrial]
) -> tuple[list[int], tuple[float, float]]:
    """Widths and lr range from the stored space, or from the trials of a foreign study."""
    space = study.user_attrs.get("space")
    if space:
        return list(space["model"]["widths"]), (space["lr"]["low"], space["lr"]["high"])
    widths = sorted({int(t.params[WIDTH]) for t in trials if WIDTH in t.params})
    dists = [t.distributions[LR] for t in trials if LR in t.distributions]
    if not widths or not dists:
        raise UserError(
            f"study {study.study_name!r} has no '{WIDTH}' and '{LR}' parameters to analyse"
        )
    return widths, (dists[0].low, dists[0].high)  # type: ignore[attr-defined]


def load_report_study(storage_url: str, study_name: str | None) -> optuna.Study:
    """Load a study for reading; never creates a storage or a study.

    Raises:
        UserError: the storage or the study does not exist, the name is ambiguous, or the study
            does not minimize one value (the validation loss this report reads).
    """
    shown = mask_url(storage_url)
    require_existing(storage_url)
    storage = open_storage(storage_url, heartbeat_s=None)
    names = sorted(optuna.get_all_study_names(storage))  # (summaries would read every trial)
    if study_name is None:
        if len(names) != 1:
            raise UserError(
                f"storage {shown} holds {len(names)} studies; choose one with --study-name: "
                + (", ".join(names) or "(none)")
            )
        study_name = names[0]
    if study_name not in names:
        raise UserError(
            f"study {study_name!r} not found in {shown}; studies there: "
            + (", ".join(names) or "(none)")
        )
    study = optuna.load_study(study_name=study_name, storage=storage)
    directions = [d.name.lower() for d in study.directions]
    if directions != ["minimize"]:
        raise UserError(
            f"study {study_name!r} in {shown} optimizes {' and '.join(directions)}: the report "
            "reads one value to minimize (a validation loss); choose a study made by study.run"
        )
    return study


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


Importances = tuple[dict[str, dict[str, float]], str]


def importances_of(trials: Sequence[FrozenTrial], direction: StudyDirection) -> Importances:
    """PED-ANOVA and fANOVA importances of width and lr over the COMPLETE ``trials``.

    Computed on an in-memory copy of those trials (what both evaluators read of a study), so that
    another process can compute them without the study's storage. Returns the importances by
    evaluator and a note naming any evaluator that could not compute them.
    """
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    storage = optuna.storages.InMemoryStorage()
    copy = optuna.Study(
        storage.get_study_name_from_id(storage.create_new_study([direction])), storage
    )
    copy.add_trials([t for t in trials if t.state == TrialState.COMPLETE])
    out: dict[str, dict[str, float]] = {}
    notes = []
    for name, ev in (
        ("PED-ANOVA", PedAnovaImportanceEvaluator()),
        ("fANOVA", FanovaImportanceEvaluator(seed=0)),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = dict(optuna.importance.get_param_importances(copy, evaluator=ev))
        except (ValueError, RuntimeError) as e:
            notes.append(f"{name}: {str(e).splitlines()[0]}")
    return out, "; ".join(notes)


def _importances_child(
    requests: Connection, results: Connection, parent_ends: tuple[Connection, ...] = ()
) -> None:
    """The second process: import the evaluators (scikit-learn: 1.4 s) while the report reads
    its study, then compute the importances of the trials it is sent and send them back.

    ``parent_ends``: the parent's ends of both pipes, which a forked child holds copies of;
    closed here, so that a parent killed before it sends the trials ends this process (EOF).
    """
    for conn in parent_ends:
        conn.close()
    # Ctrl-C reaches this process too: the parent alone handles it, and stops this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as in the parent (a spawned child)
    received: list[Any] = []

    def receive() -> None:  # at once, so that the parent's send never waits for the import
        with contextlib.suppress(EOFError, OSError):  # the parent stopped before sending
            received.append(requests.recv())

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    importlib.import_module("optuna.importance")

    reader.join()
    if not received:
        return
    result = importances_of(*received[0])
    with contextlib.suppress(BrokenPipeError):  # the parent is gone (killed): nobody to tell
        results.send(result)
    results.close()


class PendingImportances:
    """A study's importances, computed in a second process while this one draws the rest.

    fANOVA is most of a report's time (importing scikit-learn, then its forest's variances),
    and the rest of the report needs none of it. The process is forked on Linux, spawned
    elsewhere, and can start before the study is read (``PendingImportances()``, then
    :meth:`compute`): it imports scikit-learn meanwhile. It touches no storage: it is sent the
    trials and sends back only the result. Where no process can be started, or it dies,
    :meth:`result` computes them here.
    """

    def __init__(self, study: optuna.Study | None = None) -> None:
        self._args: tuple[list[FrozenTrial], StudyDirection] | None = None
        self._result: Importances | None = None
        self._proc: BaseProcess | None = None
        self._send: Connection | None = None
        self._conn: Connection | None = None
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        try:
            requests, self._send = ctx.Pipe(duplex=False)
            self._conn, results = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(
                target=_importances_child,
                args=(requests, results, (self._send, self._conn)),
                daemon=True,
            )
            self._proc.start()
            requests.close()
            results.close()
        except OSError:  # no process to be had here
            self.close()
        if study is not None:
            self.compute(study)

    def compute(self, study: optuna.Study) -> None:
        """Send the study's trials to the second process (once)."""
        self._args = (study.get_trials(deepcopy=False), study.direction)
        if self._send is not None:
            with contextlib.suppress(OSError):  # it died: computed here when asked
                self._send.send(self._args)
            self._send.close()
            self._send = None

    def result(self) -> Importances:
        """The importances (waited for the first time, then kept)."""
        if self._args is None:
            raise RuntimeError("PendingImportances.result() before compute(study)")
        if self._result is None:
            try:
                if self._conn is not None:
                    with contextlib.suppress(EOFError):  # the process died before sending them
                        self._result = self._conn.recv()
                if self._result is None:  # compute them here
                    self._result = importances_of(*self._args)
            finally:
                self.close()
        return self._result

    def close(self) -> None:
        """Stop the process if its result was never asked for (an error on the way)."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()
            self._proc.join()
            self._proc = None
        for conn in (self._send, self._conn):
            if conn is not None:
                conn.close()
        self._send = self._conn = None


def _note_markdown(rep: StudyReport, storage_url: str) -> str:
    fit = rep.fit
    lines = [
        "## How the optimal learning rate shifts with width",
        "",
        f"**{headline(fit, rep.name)}**",
        "",
    ]
    if fit.note:
        lines += [f"> {fit.note}", ""]
    lines += [
        "| width | lr* | interval | best loss | trials | complete | pruned | diverged | edge |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in fit.widths:
        interval = f"[{e.lr_low:.3g}, {e.lr_high:.3g}]" if e.lr_low is not None else "-"
        lines.append(
            f"| {e.width} | {_fmt(e.lr_star) or '-'} | {interval} | {_fmt(e.best_value) or '-'} "
            f"| {e.trials} | {e.complete} | {e.pruned} | {e.diverged} | {e.edge or ''} |"
        )
    space = rep.study.user_attrs.get("space")
    # Masked again: a study stored by an older version may hold the password in its command.
    command = mask_text(rep.study.user_attrs.get("command", "python -m study.run ..."))
    lines += [
        "",
        "Method: " + fit.settings.get("estimator", "") + "; pruned and diverged trials "
        "are counted but not fitted.",
        "",
        "Reproduce:",
        "```",
        command,
        shlex.join(
            ["python", "-m", "study.report", "--storage", mask_url(storage_url)]
            + ["--study-name", rep.name]
        ),
        "```",
    ]
    if space:
        lines += [
            "",
            f"Space fingerprint `{rep.study.user_attrs.get('space_fingerprint', '')}`: "
            f"widths {space['model']['widths']}, "
            f"lr {space['lr']['low']:g}..{space['lr']['high']:g}, "
            f"{space['optimizer']['name']}, {space['training']['epochs']} epochs"
            + (
                f", matmul precision {precision}."
                if (precision := space["training"].get("matmul_precision", "highest")) != "highest"
                else "."
            ),
        ]
    return "\n".join(lines)


def _html(reports: Sequence[StudyReport], figures: list[tuple[str, Any]], out: Path) -> Path:
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
            f"<tr><td>{e.width}</td><td>{_fmt(e.lr_star)}</td><td>{_fmt(e.lr_low)}</td>"
            f"<td>{_fmt(e.lr_high)}</td><td>{_fmt(e.best_value)}</td><td>{e.trials}</td>"
            f"<td>{e.complete}</td><td>{e.pruned}</td><td>{e.diverged}</td>"
            f"<td>{'yes' if e.at_edge else ''}</td><td>{html.escape(e.note)}</td></tr>"
            for e in rep.fit.widths
        )
        tables.append(
            f"<h2>{html.escape(rep.name)}</h2><p><b>{html.escape(headline(rep.fit, rep.name))}"
            f"</b></p><p>{html.escape(rep.fit.note)}</p><table><tr><th>width</th><th>lr*</th>"
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
        + "".join(tables)
        + "".join(parts)
        + "</body></html>"
    )
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path


def make_report(
    study: optuna.Study,
    out: Path,
    storage_url: str,
    compared: Sequence[optuna.Study] = (),
    n_bootstrap: int = 1000,
    dashboard: bool = True,
    importances: PendingImportances | None = None,
) -> list[StudyReport]:
    """Analyse ``study`` (and ``compared`` beside it) and write its report into ``out``, its
    importances computed in a second process meanwhile (``importances``: that process, started
    before the study was read; it is closed here). Returns the analyses, ``study``'s first.

    Raises:
        UserError: a study has nothing to analyse (see :func:`analyse_study`).
    """
    if importances is None:
        importances = PendingImportances()
    try:
        importances.compute(study)
        reps = [analyse_study(s, n_bootstrap) for s in (study, *compared)]
        write_report(reps[0], out, storage_url, importances, reps[1:], dashboard)
    finally:
        importances.close()
    return reps


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
    from study import figures

    out.mkdir(parents=True, exist_ok=True)
    _write_summary(out / "summary.csv", rep.fit)
    fit_json = rep.fit.to_json()
    fit_json["study"] = rep.name
    fit_json["lr_range"] = list(rep.lr_range)
    fit_json["headline"] = headline(rep.fit, rep.name)
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
    lr_fig = figures.plotly_lr_star(panels)
    interactive: list[tuple[str, Any]] = [
        ("Optimal learning rate vs width", lr_fig),
        ("Validation loss vs learning rate", figures.plotly_loss_vs_lr(panels)),
    ]
    complete = rep.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for title, make in (
                (
                    "Width x lr contour",
                    lambda: optuna.visualization.plot_contour(rep.study, params=[WIDTH, LR]),
                ),
                (
                    "Validation loss per epoch",
                    lambda: optuna.visualization.plot_intermediate_values(rep.study),
                ),
            ):
                try:
                    interactive.append((title, make()))
                except (ValueError, RuntimeError):
                    pass
    if dashboard:
        from study.dashboard import save_to_dashboard

        note = _note_markdown(rep, storage_url)
        save_to_dashboard(rep.study, lr_fig, DASHBOARD_FIGURE_ID, note)
    # Last, the figures that wait for the importances: the PNGs' last, then the page's.
    written += figures.save_png_figures(out, panels, _best_curves(rep), importances.result)
    ped_anova = importances.result()[0].get("PED-ANOVA")
    if len(complete) >= 2 and ped_anova:
        figure = figures.plotly_importances(ped_anova, rep.study)
        interactive.insert(2, ("Parameter importance (PED-ANOVA)", figure))
    written.append(_html([rep, *others], interactive, out))
    return written


def _parser() -> argparse.ArgumentParser:
    p = MaskingArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--study-name", default=None, help="default: the only study in the storage")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: reports/STUDY_NAME, the name made a safe folder name)",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="OTHER_STUDY",
        help="another study (same storage unless --compare-storage) to show beside it",
    )
    p.add_argument("--compare-storage", default=None, help="storage URL of the --compare studies")
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates (default 1000)"
    )
    p.add_argument(
        "--no-dashboard",
        action="store_true",
        help="do not save the figure and the note into the study",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # The importances' process starts first: it imports scikit-learn while the study is read.
    importances = PendingImportances()
    try:
        if args.bootstrap < 10:
            raise UserError(f"--bootstrap must be at least 10, got {args.bootstrap}")
        study = load_report_study(args.storage, args.study_name)
        compared = [
            load_report_study(args.compare_storage or args.storage, name) for name in args.compare
        ]
        out = Path(args.out) if args.out else default_report_dir(study.study_name)
        reps = make_report(
            study, out, args.storage, compared, args.bootstrap, not args.no_dashboard, importances
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        importances.close()
    for r in reps:
        print(headline(r.fit, r.name))
        if r.fit.note:
            print(f"  note: {r.fit.note}")
    print(f"report: {out}/report.html (and summary.csv, fit.json, trials.csv, PNG figures)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the trials are untouched; files written so far may be partial
        print("\ninterrupted: run the same command again for a whole report", file=sys.stderr)
        sys.exit(130)
