"""The Python API: a notebook runs, resumes and reports a study as the command line does."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from optuna.trial import TrialState

import study
from study import UserError, run_study
from tests.conftest import REPO, load


def test_the_example_script_runs_resumes_and_reports_through_the_api(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runpy.run_path(str(REPO / "scripts" / "api_example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "ran 12 trials (new study: True)" in out
    assert "resumed to 24 trials (new study: False)" in out
    trials = load("sqlite:///api_example.db", "smoke").trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 24
    assert (workdir / "reports" / "api_example" / "report.html").stat().st_size > 0


def test_run_study_stores_the_command_that_repeats_it(workdir: Path) -> None:
    result = run_study(
        "smoke", trials=3, storage="sqlite:///a.db", workers=1, report=False, quiet=True, stack=2
    )
    assert result.status == 0 and result.created and result.report is None
    command = result.study.user_attrs["command"]
    assert command == (
        "python -m study.run --space smoke --trials 3 --storage sqlite:///a.db --workers 1 "
        "--stack 2"
    )


def test_bad_input_raises_the_error_the_command_line_prints(workdir: Path) -> None:
    with pytest.raises(UserError, match="--trials must be a positive integer, got 0"):
        run_study("smoke", trials=0, storage="sqlite:///b.db")
    assert not (workdir / "b.db").exists()


def test_the_package_exports_the_api() -> None:
    assert {"run_study", "make_report", "load_space"} <= set(study.__all__)
    assert study.make_report.__module__ == "study.report"
