"""A stacked run of K members equals K separate runs; a pruned member stops, the others go on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from study.data import load_dataset
from study.space import load_space
from study.stacked import can_stack, train_stacked
from study.train import train
from tests.conftest import write_space

LRS = [1e-3, 4e-3, 2e-2]
SEEDS = [11, 12, 13]


def _space(tmp: Path, optimizer: str = "adam", parametrization: str = "sp", extra: str = ""):  # type: ignore[no-untyped-def]
    text = (
        f"[model]\nwidths = [16, 64]\nparametrization = '{parametrization}'\n"
        f"[lr]\nlow = 1e-4\nhigh = 1.0\n[optimizer]\nname = '{optimizer}'\n"
        f"weight_decay = 1e-3\n[training]\nepochs = 3\nbatch_size = 128\n{extra}"
    )
    return load_space(str(write_space(tmp, f"s_{optimizer}_{parametrization}", text)))


@pytest.mark.parametrize(
    "optimizer,parametrization,extra",
    [
        ("adam", "sp", ""),
        ("adamw", "sp", "schedule = 'cosine'\n"),
        ("sgd", "sp", ""),
        ("adam", "mup", ""),
        ("sgd", "mup", ""),
    ],
)
def test_stacked_members_equal_separate_runs(
    tmp_path: Path, optimizer: str, parametrization: str, extra: str
) -> None:
    torch.set_num_threads(1)
    space = _space(tmp_path, optimizer, parametrization, extra)
    data = load_dataset(space.dataset, space.seed)
    stacked = train_stacked(space, data, 64, LRS, SEEDS)
    for lr, seed, got in zip(LRS, SEEDS, stacked, strict=True):
        alone = train(space, data, 64, lr, seed)
        assert got.epochs_run == alone.epochs_run == 3
        assert got.curve == pytest.approx(alone.curve, rel=1e-4, abs=1e-6)
        assert got.final_train_loss == pytest.approx(alone.final_train_loss, rel=1e-4)
        assert got.val_accuracy == pytest.approx(alone.val_accuracy, abs=2e-3)
        assert got.initial_val_loss == pytest.approx(alone.initial_val_loss, rel=1e-6)


def test_a_pruned_member_stops_while_the_others_go_on(tmp_path: Path) -> None:
    space = _space(tmp_path)
    data = load_dataset(space.dataset, space.seed)
    calls: list[tuple[int, int]] = []

    def on_epoch(members: list[int], eps) -> list[bool]:  # type: ignore[no-untyped-def]
        calls.extend((m, ep.epoch) for m, ep in zip(members, eps, strict=True))
        return [m == 1 and ep.epoch == 1 for m, ep in zip(members, eps, strict=True)]

    results = train_stacked(space, data, 64, LRS, SEEDS, on_epoch)
    assert [r.epochs_run for r in results] == [3, 1, 3]
    assert [r.stopped for r in results] == [False, True, False]
    assert (1, 2) not in calls and (2, 3) in calls
    for i in (0, 2):  # the survivors are unaffected by their neighbour leaving
        alone = train(space, data, 64, LRS[i], SEEDS[i])
        assert results[i].curve == pytest.approx(alone.curve, rel=1e-4, abs=1e-6)


def test_a_diverging_member_leaves_the_stack_and_is_marked(tmp_path: Path) -> None:
    space = _space(tmp_path)
    data = load_dataset(space.dataset, space.seed)
    results = train_stacked(space, data, 64, [1e-3, 50.0], SEEDS[:2])
    assert results[1].diverged and results[1].epochs_run == 1
    assert not results[0].diverged and results[0].epochs_run == 3


def test_only_supported_spaces_are_stacked(tmp_path: Path) -> None:
    assert can_stack(_space(tmp_path))
    plateau = dataclasses.replace(
        _space(tmp_path),
        training=dataclasses.replace(_space(tmp_path).training, schedule="plateau"),
    )
    assert not can_stack(plateau)
    assert not can_stack(load_space("cnn_digits"))


def test_members_stop_early_as_their_separate_runs_do(tmp_path: Path) -> None:
    space = _space(tmp_path, extra="patience = 2\n")
    space = dataclasses.replace(space, training=dataclasses.replace(space.training, epochs=40))
    data = load_dataset(space.dataset, space.seed)
    lrs = [3e-3, 2e-2, 5e-2]
    stacked = train_stacked(space, data, 64, lrs, SEEDS)
    assert any(r.early_stopped for r in stacked)
    for lr, seed, got in zip(lrs, SEEDS, stacked, strict=True):
        alone = train(space, data, 64, lr, seed)
        assert (got.early_stopped, got.epochs_run) == (alone.early_stopped, alone.epochs_run)
        assert got.curve == pytest.approx(alone.curve, rel=1e-4, abs=1e-6)
