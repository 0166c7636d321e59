"""A study from Python, as in a notebook: run it, resume it to a larger total, report it.

    python scripts/api_example.py            # writes api_example.db and reports/api_example/

Everything ``python -m study.run`` guarantees holds here too (exact totals, resume, workers).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from study import load_space, make_report, run_study
from study.analysis import headline


def finished(study: optuna.Study) -> int:
    """Complete and pruned trials: what ``trials=`` counts (not failed or surplus ones)."""
    return len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


def main(storage: str = "sqlite:///api_example.db", out: str = "reports/api_example") -> None:
    space = load_space("smoke")  # a shipped space, or load_space("path/to/my.toml")
    print(
        f"{space.name}: widths {list(space.model.widths)}, lr {space.lr.low:g}..{space.lr.high:g}"
    )
    first = run_study("smoke", trials=12, storage=storage, report=False, quiet=True)
    print(f"ran {finished(first.study)} trials (new study: {first.created})")
    again = run_study("smoke", trials=24, storage=storage, report=False, quiet=True)  # resumes
    print(f"resumed to {finished(again.study)} trials (new study: {again.created})")
    (rep,) = make_report(again.study, Path(out), storage, n_bootstrap=200)
    print(headline(rep.fit, again.study.study_name))
    print(f"report: {out}/report.html")


if __name__ == "__main__":
    main()
