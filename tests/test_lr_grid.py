"""scripts/lr_grid.py (the grid an estimate is judged by) and scripts/pruner_live.py (live
studies against a reference), each run as a user runs it, on a tiny space."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from study.run import main
from tests.conftest import REPO, write_space
from tests.test_pruner_replay import SPACE as REPLAY_SPACE

sys.path.insert(0, str(REPO / "scripts"))
from lr_grid import grid_vertex, valley_middle  # noqa: E402

SPACE = REPLAY_SPACE.replace("epochs = 6", "epochs = 3")  # widths 8 and 32, no pruning


def test_the_valley_middle_is_the_middle_of_the_lrs_near_the_lowest_loss() -> None:
    x = np.arange(-10.0, -3.0)  # -10 .. -4
    # flat bottom from -8 to -6 (within 5% of the lowest), the lowest point at -8 by noise
    y = np.log([2.0, 1.0, 0.100, 0.102, 0.104, 0.5, 1.0])
    assert valley_middle(x, y, 0.05) == -7.0
    assert valley_middle(x, y, 0.025) == -7.5  # only -8 and -7 are within 2.5%
    assert grid_vertex(x, y) == pytest.approx(-7.5, abs=0.5)  # near the lowest point, not -7
    assert grid_vertex(x, np.log([0.1, 1, 2, 3, 4, 5, 6])) == -10.0  # at the grid's bound


def _run(workdir: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(REPO / "scripts" / script), *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)


def test_grid_and_compare_on_a_real_study(workdir: Path) -> None:
    write_space(workdir, "g", SPACE)
    run = ["--space", "g.toml", "--trials", "12", "--storage", "sqlite:///g.db", "--workers", "1"]
    assert main([*run, "--study-name", "g", "--quiet", "--no-report"]) == 0
    args = ["--space", "g.toml", "--low", "-8", "--high", "-2", "--step", "2", "--seeds", "2"]
    out = _run(workdir, "lr_grid.py", *args, "--out", "grid.json", "--workers", "2")
    assert out.returncode == 0, out.stderr
    grid = json.loads((workdir / "grid.json").read_text())
    assert grid["log2_lrs"] == [-8.0, -6.0, -4.0, -2.0]
    assert sorted(grid["widths"]) == ["32", "8"]
    assert all(len(w["mean_log_loss"]) == 4 for w in grid["widths"].values())
    again = [*args, "--out", "grid.json", "--reuse", "--compare", "sqlite:///g.db:g"]
    out = _run(workdir, "lr_grid.py", *again, "--windows", "2,4")
    assert out.returncode == 0, out.stderr
    summary = [line for line in out.stdout.splitlines() if "mean |error|" in line]
    assert [line.split(":")[0] for line in summary] == ["window 2", "window 4"], out.stdout
    assert "of 2;" in summary[0], out.stdout  # one estimate per width of the one study
    assert "between studies, -" in summary[0], out.stdout  # one study: no spread to show


def test_live_runs_are_compared_with_the_reference(workdir: Path) -> None:
    write_space(workdir, "ref", SPACE)
    run = ["--space", "ref.toml", "--trials", "12", "--storage", "sqlite:///ref.db"]
    assert main([*run, "--workers", "1", "--study-name", "ref", "--quiet", "--no-report"]) == 0
    write_space(workdir, "cand", SPACE.replace('name = "none"', 'name = "median"'))
    args = ["--reference", "sqlite:///ref.db", "--reference-name", "ref", "--runs", "1"]
    out = _run(workdir, "pruner_live.py", *args, "--trials", "12", "--out", "live", "cand.toml")
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith("cand ")]
    assert len(rows) == 1 and rows[0][1] == "0", out.stdout
    res = json.loads((workdir / "live" / "live.json").read_text())
    (facts,) = next(iter(res["runs"].values()))
    assert facts["trials"] == 12
    assert set(facts["moves_log2"]) == {"8", "32"}
