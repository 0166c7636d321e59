"""lr* at an unseen width: the prediction and its interval, the leave-one-out misses, the bend
check (study.extrapolate), and ``study.predict --verify`` on a real study, killed and resumed."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optuna.trial import TrialState

from study.analysis import Point, analyze
from study.extrapolate import bend, leave_one_out, predict
from study.names import VERIFY_INDEX, VERIFY_WIDTH
from study.predict import main
from study.run import main as run_main
from tests.conftest import db_digest, fault_env, fault_taken, load

WIDTHS = [32, 64, 128, 256, 512, 1024]
URL = "sqlite:///s.db"


def _valleys(centre_log2: dict[int, float], seed: int, n: int = 30) -> list[Point]:
    rng = np.random.default_rng(seed)
    points = []
    for w, c in centre_log2.items():
        for x in rng.uniform(c - 5, c + 5, n):
            loss = math.exp(0.08 * (x - c) ** 2 + rng.normal(0, 0.03))
            points.append(Point(w, 2.0**x, loss, "complete"))
    return points


def _fit(centres: dict[int, float], seed: int = 0):  # type: ignore[no-untyped-def]
    return analyze(_valleys(centres, seed), list(centres), (2.0**-20, 1.0), n_bootstrap=300)


def test_a_power_law_is_predicted_inside_its_interval_and_plain_transfer_is_not() -> None:
    law = {w: -6 - 0.8 * math.log2(w / 32) for w in WIDTHS}
    fit = _fit(law)
    pred = predict(fit, 4096, transfer_width=32)
    truth = 2.0 ** (-6 - 0.8 * 7)
    assert pred.lr_low < truth < pred.lr_high
    assert pred.lr_low < pred.lr_pred < pred.lr_high and pred.scatter_included
    assert pred.transfer_width == 32 and not pred.lr_low < pred.lr_transfer < pred.lr_high
    # Farther out, the interval widens; predicting is symmetric below the narrowest width.
    farther = predict(fit, 16384, transfer_width=32)
    assert math.log2(farther.lr_high / farther.lr_low) > math.log2(pred.lr_high / pred.lr_low)
    assert predict(fit, 8, transfer_width=32).lr_pred > 2.0**-6


def test_with_two_widths_the_interval_is_the_fits_spread_only() -> None:
    fit = _fit({64: -7.0, 256: -8.0})
    pred = predict(fit, 1024, transfer_width=64)
    assert not pred.scatter_included and pred.lr_low < pred.lr_pred < pred.lr_high
    with pytest.raises(ValueError, match="at least 2 widths"):
        predict(_fit({64: -7.0}), 1024, transfer_width=64)


def test_leave_one_out_misses_little_on_a_power_law_and_a_bend_is_flagged() -> None:
    straight = _fit({w: -6 - 0.5 * math.log2(w / 32) for w in WIDTHS})
    misses = leave_one_out(straight)
    assert [m.width for m in misses] == WIDTHS
    assert max(abs(m.miss_log2) for m in misses) < 0.5
    b = bend(straight)
    assert b is not None and not b.flagged
    # lr* falls, then flattens: a parabola in log2 width, not a line.
    bent = _fit({w: -6 - 1.2 * math.log2(w / 32) + 0.25 * math.log2(w / 32) ** 2 for w in WIDTHS})
    b = bend(bent)
    assert b is not None and b.flagged and b.curvature > 0
    assert max(abs(m.miss_log2) for m in leave_one_out(bent)) > 0.5  # the ends are missed


@pytest.fixture(scope="module")
def smoke_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("smoke")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        args = ["--space", "smoke", "--trials", "30", "--storage", URL, "--workers", "1"]
        assert run_main([*args, "--quiet", "--no-report"]) == 0
    finally:
        os.chdir(cwd)
    return folder / "s.db"


@pytest.fixture
def db(smoke_db: Path, workdir: Path) -> Path:
    shutil.copy(smoke_db, workdir / "s.db")
    return workdir / "s.db"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--width", "16"], "is inside the measured widths 8..32"),
        (["--width", "0"], "--width must be a positive integer"),
        (["--width", "64", "--verify", "2"], "--verify needs at least 3 trials"),
        (["--width", "400000000", "--verify", "3"], "--width must be at most 16,777,216"),
        (["--width", "10000000", "--verify", "3"], "needs about"),
        (["--width", "64", "--verify", "3", "--heartbeat", "0"], "--heartbeat must be"),
        (["--width", "64", "--study-name", "nope"], "study 'nope' not found"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    db: Path, args: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = db_digest(db)
    assert main(["--storage", URL, *args, "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert db_digest(db) == before and not Path("out").exists()


def test_a_study_with_one_estimated_width_has_no_prediction(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = workdir / "one.toml"
    space.write_text(
        "[model]\nwidths = [16]\n[lr]\nlow = 1e-3\nhigh = 1.0\n[training]\nepochs = 2\n"
    )
    assert (
        run_main(
            [
                "--space",
                str(space),
                "--trials",
                "8",
                "--storage",
                URL,
                "--quiet",
                "--no-report",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    assert main(["--storage", URL, "--width", "64"]) == 2
    assert "needs at least 2 widths" in capsys.readouterr().err


def test_verify_runs_its_trials_once_across_a_kill_and_never_counts_them(
    db: Path, workdir: Path
) -> None:
    command = [
        sys.executable,
        "-m",
        "study.predict",
        "--storage",
        URL,
        "--width",
        "64",
        "--verify",
        "4",
        "--heartbeat",
        "1",
        "--workers",
        "1",  # the process that takes the fault is the command's
        "--out",
        "out",
    ]
    token = workdir / "fault"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **fault_env("kill@2", token))
    killed = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out, _ = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, out
    _, number = fault_taken(token, killed)
    assert "prediction: lr* at width 64 = " in out and "verify:     4 trials at width 64" in out

    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "measured:   " in done.stdout and "penalty:    at the predicted lr " in done.stdout

    study = load(URL, "smoke")
    plan = study.user_attrs["verify_plan:64"]["lrs"]
    mine = [t for t in study.trials if t.user_attrs.get(VERIFY_WIDTH) == 64]
    finished = [t for t in mine if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.user_attrs[VERIFY_INDEX] for t in finished) == [0, 1, 2, 3]
    assert sorted(t.params["lr"] for t in finished) == sorted(plan)
    killed_trial = next(t for t in mine if t.number == number)
    assert killed_trial.state == TrialState.FAIL  # failed as stale, its index run again
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The study itself: still its 30 trials, which the same run command says are done.
    assert (
        run_main(["--space", "smoke", "--trials", "30", "--storage", URL, "--quiet", "--no-report"])
        == 0
    )
    assert len([t for t in load(URL, "smoke").trials if VERIFY_WIDTH not in t.user_attrs]) == 30

    written = json.loads((workdir / "out" / "prediction.json").read_text())
    for key in (
        "width",
        "lr_pred",
        "lr_low",
        "lr_high",
        "lr_transfer",
        "lr_measured",
        "inside",
        "penalty_pred",
        "penalty_transfer",
    ):
        assert key in written
    # A third run has nothing left to train, and the report shows the verification.
    again = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "trial " not in again.stdout.replace("trials at", "")
    from study.report import main as report_main

    assert report_main(["--storage", URL, "--out", "rep", "--no-dashboard"]) == 0
    fit = json.loads((workdir / "rep" / "fit.json").read_text())
    assert [v["width"] for v in fit["verifications"]] == [64]
    assert fit["verifications"][0]["lr_measured"] == written["lr_measured"]
    assert fit["extrapolation"]["largest_miss_log2"] is not None
    assert "measured at width 64" in (workdir / "rep" / "report.html").read_text()


def test_verify_with_two_workers_runs_each_lr_once(db: Path, workdir: Path) -> None:
    assert main(["--storage", URL, "--width", "64", "--verify", "5", "--workers", "2"]) == 0
    mine = [t for t in load(URL, "smoke").trials if t.user_attrs.get(VERIFY_WIDTH) == 64]
    done = [t for t in mine if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.user_attrs[VERIFY_INDEX] for t in done) == [0, 1, 2, 3, 4]
    assert (
        len(
            {
                t.user_attrs["worker"] if "worker" in t.user_attrs else t.system_attrs.get("worker")
                for t in done
            }
        )
        >= 1
    )


def test_a_prediction_past_the_studys_lr_range_cannot_be_verified() -> None:
    from study._errors import UserError
    from study.extrapolate import Prediction
    from study.predict import plan_lrs

    far = Prediction(65536, 4e-6, 1e-6, 2e-5, 1e-2, 32, True)
    with pytest.raises(UserError, match="outside the study's lr range 0.0001..1"):
        plan_lrs(far, 6, (1e-4, 1.0))
    near = Prediction(2048, 3e-4, 2e-4, 5e-4, 5e-3, 32, True)
    lrs = plan_lrs(near, 8, (1e-4, 1.0))
    assert len(lrs) == 8 and 1e-4 <= min(lrs) and max(lrs) <= 1.0 and 5e-3 in lrs
