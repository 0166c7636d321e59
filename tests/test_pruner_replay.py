"""scripts/pruner_replay.py: recorded curves through pruner settings, on a real study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from study.names import LR, WIDTH
from study.run import main
from tests.conftest import REPO, write_space

SPACE = """
[model]
widths = [8, 32]
[lr]
low = 1e-4
high = 1.0
[training]
epochs = 6
batch_size = 256
[pruner]
name = "none"
[sampler]
name = "random"
"""


def _replay(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "pruner_replay.py"),
            "--storage",
            "sqlite:///r.db",
            "--study-name",
            "r",
            "--space",
            str(workdir / "r.toml"),
            "--orderings",
            "3",
            *args,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
    )


def test_replay_without_pruning_keeps_every_epoch_and_lr_star(workdir: Path) -> None:
    write_space(workdir, "r", SPACE)
    run = ["--space", "r.toml", "--trials", "16", "--storage", "sqlite:///r.db", "--workers", "1"]
    assert main([*run, "--study-name", "r", "--quiet", "--no-report"]) == 0
    settings = ["--percentiles", "50", "--warmups", "6,1", "--protects", "0,20"]
    out = _replay(workdir, *settings, "--patiences", "0,1")
    assert out.returncode == 0, out.stderr
    rows = {}
    for line in out.stdout.splitlines():
        if line.startswith("percentile 50, warmup"):
            setting, cells = line[:50].strip().split(", "), line[50:].split()
            rows[tuple(setting[1:])] = cells
    assert len(rows) == 8, out.stdout
    # warmup 6 of 6 epochs: the pruner never decides, so nothing moves (the fit sees the same
    # points in another order: float noise only)
    epochs, time, *moves = rows[("warmup 6",)]
    assert (epochs, time) == ("100%", "100%"), out.stdout
    assert [abs(float(c.split("/")[1])) for c in moves] == [0.0, 0.0], out.stdout
    # warmup 1: the median pruner stops some trials early, which saves training time too
    epochs, time, *moves = rows[("warmup 1",)]
    assert int(epochs.rstrip("%")) < 100 and int(time.rstrip("%")) < 100, out.stdout
    # ...unless every lr is protected: 20 log2 units hold the whole range (1e-4..1 is 13.3)
    epochs, time, *moves = rows[("warmup 1", "protect 20")]
    assert (epochs, time) == ("100%", "100%"), out.stdout
    # early stopping works beside the pruner, protection or not: a trial whose loss did not
    # improve in an epoch (patience 1) stops there
    for key in (("warmup 6", "patience 1"), ("warmup 1", "protect 20", "patience 1")):
        epochs, time, *moves = rows[key]
        assert int(epochs.rstrip("%")) < 100, out.stdout


def test_replay_refuses_a_study_that_was_pruned(workdir: Path) -> None:
    write_space(workdir, "r", SPACE)
    study = optuna.create_study(storage="sqlite:///r.db", study_name="r")
    dists = {WIDTH: CategoricalDistribution([8, 32]), LR: FloatDistribution(1e-4, 1.0, log=True)}
    study.add_trial(
        create_trial(
            params={WIDTH: 8, LR: 0.01},
            distributions=dists,
            state=TrialState.PRUNED,
            intermediate_values={1: 0.5},
            user_attrs={"diverged": False},
        )
    )
    out = _replay(workdir)
    assert out.returncode != 0
    assert out.stderr.startswith("error: ") and "pruner 'none'" in out.stderr, out.stderr


def test_write_reference_writes_the_space_with_pruning_and_early_stopping_off(
    workdir: Path,
) -> None:
    from study.space import load_space

    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "pruner_replay.py"),
            "--space",
            "cnn_digits",
            "--write-reference",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "--space cnn_digits_nopruning.toml" in done.stdout
    reference = load_space(str(workdir / "cnn_digits_nopruning.toml"))
    shipped = load_space("cnn_digits")
    assert reference.name == "cnn_digits_nopruning"
    assert reference.pruner.name == "none" and reference.training.patience == 0
    assert shipped.pruner.name != "none" and shipped.training.patience > 0
    assert (reference.model, reference.lr, reference.optimizer) == (
        shipped.model,
        shipped.lr,
        shipped.optimizer,
    )


def test_replay_without_a_study_says_what_it_needs(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "pruner_replay.py"), "--space", "cnn_digits"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith("--storage and --study-name are required (or --write-reference)")
    )
