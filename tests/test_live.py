"""The answer while the study runs (study.live): the dashboard's note holds a fit before the
end, and ``--until-ci`` stops the study once alpha's interval is narrow enough."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from optuna.trial import TrialState

from study.live import Answer, look, stored_answer
from study.report_files import DASHBOARD_FIGURE_ID
from study.run import main
from tests.conftest import Dashboard, fault_env, fault_taken, load, spawn, wait_until

URL = "sqlite:///s.db"
SMOKE = ("--space", "smoke", "--storage", URL, "--workers", "1")


def _finished(name: str = "smoke") -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in load(URL, name).trials)


def test_an_answer_settles_only_when_narrow_enough_and_every_width_is_inside() -> None:
    narrow = Answer(90, 0.6, 0.5, 0.75, [])
    assert narrow.ci_width == pytest.approx(0.25)
    assert narrow.settles(0.3) and not narrow.settles(0.2)
    assert "0.250 wide (> 0.2)" in narrow.why_not(0.2) and narrow.why_not(0.3) == ""
    at_edge = Answer(90, 0.6, 0.5, 0.75, [1024])
    assert not at_edge.settles(0.3) and "[1024]" in at_edge.why_not(0.3)
    no_fit = Answer(4, None, None, None, [32, 64])
    assert not no_fit.settles(10) and no_fit.describe() == "alpha -"
    assert narrow.describe() == "alpha 0.60 [0.50, 0.75] 0.25 wide"


@pytest.mark.parametrize("bad", ["0", "-0.3", "nan", "inf"])
def test_a_bad_until_ci_is_one_line_and_stores_nothing(
    bad: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*SMOKE, "--trials", "6", "--until-ci", bad, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--until-ci must be a positive" in err
    assert not (workdir / "s.db").exists()


def test_until_ci_stops_at_a_settled_answer_and_a_narrower_one_continues(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*SMOKE, "--trials", "45", "--no-report", "--quiet"]) == 0
    answer = look(load(URL, "smoke"), URL, dashboard=False)
    assert answer is not None and answer.finished == 45
    assert not answer.unsettled and not answer.young  # 8+ complete trials at every width
    width = answer.ci_width
    assert width is not None

    # Already narrow enough: no trial runs, and the run says why it stopped.
    capsys.readouterr()
    assert main([*SMOKE, "--trials", "60", "--until-ci", f"{width + 0.01:.4f}"]) == 0
    out = capsys.readouterr().out
    assert "stopped:   the answer settled at 45 trials" in out
    assert _finished() == 45

    # Narrower: the same study goes on, up to the --trials cap at most.
    assert main([*SMOKE, "--trials", "51", "--until-ci", f"{width / 4:.4f}"]) == 0
    out = capsys.readouterr().out
    assert _finished() == 51
    assert "stopped:   reached --trials 51 before the answer settled: alpha's interval" in out
    assert not [t for t in load(URL, "smoke").trials if t.state == TrialState.RUNNING]


def test_the_dashboard_note_holds_a_fit_while_the_study_runs_and_until_ci_stops_it(
    workdir: Path, dashboard: Callable[[str, Path], Dashboard]
) -> None:
    """The run's only process freezes in its 46th trial (a fault point); meanwhile the live
    process analyses the 45 finished trials: the real optuna-dashboard serves a note with the
    fit, and the stored answer settles. Woken, the run ends its trial and stops there."""
    assert main([*SMOKE, "--trials", "45", "--no-report", "--quiet"]) == 0
    assert stored_answer(load(URL, "smoke")) is None  # no live process without a report
    token = workdir / "fault"
    run = ("--trials", "90", "--until-ci", "100", "--stack", "1")  # one trial at a time
    proc = spawn(*SMOKE, *run, cwd=workdir, env=fault_env("stop@2#45", token))
    try:
        pid, number = fault_taken(token, proc)
        assert pid == proc.pid and number == 45
        wait_until(lambda: stored_answer(load(URL, "smoke")) is not None, 120, "the live answer")
        answer = stored_answer(load(URL, "smoke"))
        assert answer is not None and answer.finished == 45 and answer.settles(100)

        page = dashboard(URL, workdir).study("smoke")
        note = page["note"]["body"]
        assert "So far, from 45 of 90 finished trials while the study runs" in note
        assert f"alpha = {answer.alpha:.2f}" in note
        saved = [g["id"] for g in page["plotly_graph_objects"]]
        assert saved == [DASHBOARD_FIGURE_ID]
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "stopped:   the answer settled at 46 trials" in out, out
    assert _finished() == 46  # the frozen trial ended, then nothing more
    assert not [t for t in load(URL, "smoke").trials if t.state == TrialState.RUNNING]
    final = stored_answer(load(URL, "smoke"))
    assert final is not None and final.finished == 46


def test_a_narrow_interval_from_too_few_complete_trials_does_not_stop_the_study() -> None:
    from study.live import MIN_COMPLETE_TO_STOP, Answer

    young = Answer(60, 0.7, 0.6, 0.8, [], [1024])
    assert not young.settles(0.3)
    assert f"widths [1024] have fewer than {MIN_COMPLETE_TO_STOP} complete trials" in (
        young.why_not(0.3)
    )
    assert Answer(60, 0.7, 0.6, 0.8, [], []).settles(0.3)
