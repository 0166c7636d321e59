"""The benchmark's derived spaces: the study's own space with only the keys it means changed."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import optuna
import pytest

from study.space import (
    available_spaces,
    load_space,
    resolve_space_path,
    space_to_toml,
    with_changes,
)
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))  # the bench lives there, outside the package
import bench  # noqa: E402
from bench import compare_studies, without_speedups  # noqa: E402


@pytest.mark.parametrize("name", available_spaces())
def test_the_reference_space_differs_only_in_pruning_and_early_stopping(
    name: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{name}_nopruning.toml"
    path.write_text(space_to_toml(without_speedups(load_space(name))))
    space, reference = load_space(name), load_space(str(path))
    assert reference.pruner.name == "none" and reference.training.patience == 0
    same = dataclasses.replace(
        reference,
        name=space.name,
        pruner=space.pruner,
        training=dataclasses.replace(reference.training, patience=space.training.patience),
    )
    assert same.fingerprint() == space.fingerprint()


@pytest.mark.parametrize("name", available_spaces())
def test_the_bf16_space_differs_only_in_its_matmul_precision(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}_bf16.toml"
    path.write_text(
        space_to_toml(with_changes(load_space(name), {"training.matmul_precision": "medium"}))
    )
    space, bf16 = load_space(name), load_space(str(path))
    assert bf16.training.matmul_precision == "medium"
    same = dataclasses.replace(bf16, name=space.name, training=space.training)
    assert same.fingerprint() == space.fingerprint()


def test_the_studies_run_on_a_space_given_as_a_relative_path(workdir: Path) -> None:
    """Each run starts in the bench's folder: a space path relative to the user's folder must
    still be found, and each run's study read back under its own space's name."""
    (workdir / "spaces").mkdir()
    (workdir / "spaces" / "mine.toml").write_text(resolve_space_path("smoke").read_text())
    (workdir / "bench").mkdir()
    out = compare_studies(workdir / "bench", "spaces/mine.toml", trials=8, workers=1)
    runs = ["tool", "reference", "naive"] + (["tool_bf16"] if "tool_bf16" in out else [])
    for name in runs:
        assert out[name]["trials"] == 8, name
    assert 0 < out["tool_until"]["trials"] <= 8  # --until-ci: 8 at most
    for name in [*runs, "tool_until"]:
        answer = out[name]["time_to_answer"]
        assert answer["seconds"] is None or answer["seconds"] > 0, name
    assert set(out["tool"]["lr_star"]) == {"8", "16", "32"}
    assert (workdir / "bench" / "mine_nopruning.toml").exists()


def test_the_machine_line_names_the_cpu_and_its_vector_kernels() -> None:
    import platform

    import torch
    from bench import machine

    line = machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        if names:
            assert f", {names[0]} (" in line
    assert f"(torch's CPU kernels: {torch.backends.cpu.get_cpu_capability()})" in line
    assert line.startswith(f"{platform.machine()}, ")


def test_training_flops_are_those_of_the_fastest_run_as_the_peak_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bench

    from study.train import TrainResult
    from study.train import train as real_train

    widths = load_space("smoke").model.widths
    # The warm-up run, then per width a slow run, the fastest and a middle one.
    times = iter([9.0] + [3.0, 1.0, 2.0] * len(widths))

    def timed_train(*args: object, **kwargs: object) -> TrainResult:
        r = real_train(*args, **kwargs)  # type: ignore[arg-type]
        r.seconds, r.setup_seconds, r.eval_seconds, r.callback_seconds = next(times), 0, 0, 0
        return r

    monkeypatch.setattr(bench, "train", timed_train)
    rows = bench.training_flops("smoke", epochs=1, repeats=3)
    assert [row["seconds_per_epoch"] for row in rows] == [1.0] * len(widths)
    assert next(times, None) is None  # three runs a width, no more


def test_time_to_answer_is_when_the_replayed_trials_first_settle(workdir: Path) -> None:
    from datetime import timedelta

    from study.run import main as run_main

    args = ["--space", "smoke", "--trials", "45", "--storage", "sqlite:///t.db", "--workers", "1"]
    assert run_main([*args, "--quiet", "--no-report"]) == 0
    study = optuna.load_study(study_name="smoke", storage="sqlite:///t.db")
    launched = min(t.datetime_start for t in study.trials) - timedelta(seconds=2)
    wide = bench.time_to_answer("sqlite:///t.db", "smoke", "smoke", launched, until_ci=100)
    assert wide["trials"] is not None and wide["trials"] % 5 == 0 or wide["trials"] == 45
    ended = sorted(t.datetime_complete for t in study.trials)
    assert wide["seconds"] == (ended[wide["trials"] - 1] - launched).total_seconds() > 2
    assert wide["ci"] <= 100 and wide["alpha"] is not None
    never = bench.time_to_answer("sqlite:///t.db", "smoke", "smoke", launched, until_ci=1e-6)
    assert never == {"seconds": None, "trials": None, "alpha": None, "ci": None}
