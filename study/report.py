"""The report: ``python -m study.report --storage URL --study-name NAME --out DIR``.

Writes ``summary.csv``, ``fit.json``, ``trials.csv``, PNG figures and one self-contained
interactive ``report.html`` (plotly bundled, no network), and saves the lr*-vs-width figure and a
note into the study for optuna-dashboard. ``--compare OTHER`` puts a second study beside it (for
example SP vs muP). Nothing else is ever written to a study.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import optuna

from study._cli import command_parser
from study._errors import UserError
from study.analysis import StudyReport, headline
from study.importances import PendingImportances, importances_of
from study.report_files import DASHBOARD_FIGURE_ID, analyse_study, write_report
from study.storage import DEFAULT_STORAGE, open_storage
from study.urls import dashboard_url, mask_url, require_existing

__all__ = [
    "DASHBOARD_FIGURE_ID",
    "PendingImportances",
    "StudyReport",
    "analyse_study",
    "default_report_dir",
    "importances_of",
    "load_report_study",
    "main",
    "make_report",
    "write_report",
]

# A study name is kept as its report folder's name only if it is made of these, ...
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_MAX_KEPT_NAME = 100  # ... no longer than this (a file name has at most 255 bytes), ...
# ... and does not end as a changed name does: "-" and the first hex digits of its SHA-256.
_HASH_HEX = 10
_HASHED_END = re.compile(rf"-[0-9a-f]{{{_HASH_HEX}}}$")


def default_report_dir(study_name: str, storage: str = DEFAULT_STORAGE) -> Path:
    """``reports/<folder>`` in the current folder, for a report with no ``--out``.

    A study name is any string (Optuna stores ``/tmp/x``, ``../../x`` or ``.hidden``, and anyone
    with the database can choose it), so it is never used as a path: the folder keeps only
    ``[A-Za-z0-9._-]`` (others become ``_``), never starts with ``.`` and is never empty. A name
    that had to change carries ``-`` and a hash of the real name, which a kept name never ends
    with, so two different names never share a folder. A study of another storage than the
    default carries a hash of that storage too: two studies of one name in two storages, reported
    from one folder, never overwrite each other.
    """
    safe = _UNSAFE_CHAR.sub("_", study_name)
    if (
        storage == DEFAULT_STORAGE
        and safe == study_name
        and safe
        and not safe.startswith(".")
        and len(safe) <= _MAX_KEPT_NAME
        and not _HASHED_END.search(safe)
    ):
        return Path("reports") / safe
    key = study_name if storage == DEFAULT_STORAGE else f"{study_name}\n{dashboard_url(storage)}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    stem = safe.lstrip(".")[:64] or "study"
    return Path("reports") / f"{stem}-{digest[:_HASH_HEX]}"


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


def _parser() -> argparse.ArgumentParser:
    p = command_parser(
        "study.report", "Write a study's report: lr* per width, alpha, figures, an HTML page."
    )
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the storage")
    p.add_argument(
        "--study-name", default=None, help="the study (default: the only study in the storage)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: reports/STUDY_NAME, the name made a safe folder name, "
        "with a hash of the storage unless it is the default)",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="OTHER_STUDY",
        help="another study (same storage unless --compare-storage) to show beside it; "
        "repeat for more (default: none)",
    )
    p.add_argument(
        "--compare-storage",
        default=None,
        help="storage URL of the --compare studies (default: --storage)",
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap replicates for the intervals"
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
        out = Path(args.out) if args.out else default_report_dir(study.study_name, args.storage)
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
