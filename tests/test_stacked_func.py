"""Stacked trials for any model (study.stacked_func): the transformer and a user's model, K at a
time with torch.func; each member equals its own run, a stopped member leaves the stack."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from study.data import load_dataset
from study.space import load_space
from study.stacked_func import can_stack_any, train_stacked_any
from study.train import make_model, train
from study.user_parts import prepare_space
from tests.conftest import REPO, write_space
from tests.test_gpt import TINY

LRS = [3e-4, 3e-3, 3e-2]
SEEDS = [11, 12, 13]


def _gpt(tmp: Path, optimizer: str, parametrization: str, schedule: str):  # type: ignore[no-untyped-def]
    text = (
        TINY.replace('name = "adamw"', f'name = "{optimizer}"\nweight_decay = 1e-2')
        .replace('schedule = "warmup_cosine"', f'schedule = "{schedule}"\nepochs = 2')
        .replace("epochs = 1\n", "")
        .replace(
            'family = "gpt"',
            f'family = "gpt"\nparametrization = "{parametrization}"\nbase_width = 8',
        )
    )
    return prepare_space(
        load_space(str(write_space(tmp, f"g_{optimizer}_{parametrization}", text)))
    )


def _same(got, alone) -> None:  # type: ignore[no-untyped-def]
    assert got.epochs_run == alone.epochs_run
    assert got.curve == pytest.approx(alone.curve, rel=1e-4, abs=1e-6)
    assert got.final_train_loss == pytest.approx(alone.final_train_loss, rel=1e-4)
    assert got.initial_val_loss == pytest.approx(alone.initial_val_loss, rel=1e-6)
    assert got.diverged == alone.diverged


@pytest.mark.parametrize(
    "optimizer,parametrization,schedule",
    [
        ("adamw", "sp", "warmup_cosine"),
        ("adam", "mup", "cosine"),
        ("sgd", "sp", "none"),
        ("adamw", "mup", "warmup_cosine"),
    ],
)
def test_stacked_transformers_equal_their_separate_runs(
    tmp_path: Path, optimizer: str, parametrization: str, schedule: str
) -> None:
    torch.set_num_threads(1)
    space = _gpt(tmp_path, optimizer, parametrization, schedule)
    data = load_dataset(space.dataset, space.seed)
    stacked = train_stacked_any(space, data, 16, LRS, SEEDS)
    for lr, seed, got in zip(LRS, SEEDS, stacked, strict=True):
        _same(got, train(space, data, 16, lr, seed))


def test_a_users_model_stacks_and_a_stopped_member_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO / "examples")
    space = prepare_space(load_space("space.toml"))
    data = load_dataset(space.dataset, space.seed)
    assert can_stack_any(space, make_model(space, 16, data))

    def on_epoch(members: list[int], eps) -> list[bool]:  # type: ignore[no-untyped-def]
        return [m == 1 and ep.epoch == 1 for m, ep in zip(members, eps, strict=True)]

    got = train_stacked_any(space, data, 16, LRS, SEEDS, on_epoch)
    assert got[1].epochs_run == 1 and got[1].stopped
    for i in (0, 2):
        _same(got[i], train(space, data, 16, LRS[i], SEEDS[i]))


def test_models_that_cannot_stack_are_told_apart() -> None:
    space = load_space("smoke")
    bn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    drop = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.0))
    assert not can_stack_any(space, bn) and not can_stack_any(space, drop)
    assert can_stack_any(space, plain)


def test_a_users_study_stacks_its_trials_when_asked(workdir: Path) -> None:
    import shutil

    from study.run import main
    from tests.conftest import load

    for name in ("net.py", "data.csv", "space.toml"):
        shutil.copy(REPO / "examples" / name, workdir / name)
    args = ["--space", "space.toml", "--trials", "15", "--storage", "sqlite:///u.db"]
    assert main([*args, "--workers", "1", "--stack-max-width", "32", "--quiet", "--no-report"]) == 0
    trials = load("sqlite:///u.db", "my_model").trials
    stacked = {t.params["width"] for t in trials if t.user_attrs.get("stacked", 1) > 1}
    assert len(trials) == 15 and stacked and stacked <= {16, 32}


def test_stack_max_width_zero_turns_the_mlp_stack_off(workdir: Path) -> None:
    from study.run import main
    from tests.conftest import load

    args = ["--space", "smoke", "--trials", "9", "--storage", "sqlite:///z.db", "--workers", "1"]
    assert main([*args, "--stack-max-width", "0", "--quiet", "--no-report"]) == 0
    assert not [t for t in load("sqlite:///z.db", "smoke").trials if "stacked" in t.user_attrs]
    assert main([*args[:3], "30", *args[4:], "--quiet", "--no-report"]) == 0
    assert [t for t in load("sqlite:///z.db", "smoke").trials if "stacked" in t.user_attrs]
