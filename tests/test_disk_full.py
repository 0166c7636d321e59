"""A disk that fills up mid-study: one line, and the next run, given room, ends at the total."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.conftest import load


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs): a smoke study's database and its write-ahead log
    outgrow it within its first few dozen trials. Mounting needs root; .ci/run runs as root and
    sets REQUIRE_MOUNT."""
    disk = tmp_path / "disk"
    disk.mkdir()
    why = "mounting a small tmpfs needs root" if os.geteuid() != 0 else ""
    if not why:
        mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]
        done = subprocess.run(mount, capture_output=True, text=True)
        why = done.stderr.strip() if done.returncode else ""
    if why:
        if os.environ.get("REQUIRE_MOUNT"):
            pytest.fail(f"REQUIRE_MOUNT is set but no small disk can be mounted: {why}")
        pytest.skip(f"no small disk: {why}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


def test_a_full_disk_ends_the_run_in_one_line_and_the_next_run_reaches_the_total(
    small_disk: Path,
) -> None:
    url = f"sqlite:///{small_disk}/s.db"
    command = [sys.executable, "-m", "study.run", "--space", "smoke", "--trials", "300"]
    command += ["--storage", url, "--heartbeat", "1", "--no-report", "--quiet"]
    full = subprocess.run(command, cwd=small_disk.parent, capture_output=True, text=True)
    assert full.returncode == 2, full.stderr
    assert full.stderr.startswith("error: ") and full.stderr.count("\n") == 1, full.stderr
    assert "full" in full.stderr and "--trials 300" in full.stderr  # what and how to resume
    trials = load(url, "smoke").trials
    assert trials and sum(t.state.is_finished() for t in trials) < 300  # it stopped mid-study

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = subprocess.run(command, cwd=small_disk.parent, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    trials = load(url, "smoke").trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 300
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # What the full disk left running was failed and retried, as after a kill.
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    failed -= {t.number for t in trials if t.system_attrs.get("surplus")}
    assert retried == failed
