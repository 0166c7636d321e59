"""The benchmark's reference space: the study's own space with pruning off, nothing else."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from study.bench import _without_pruning
from study.space import available_spaces, load_space, resolve_space_path


@pytest.mark.parametrize("name", available_spaces())
def test_the_reference_space_differs_only_in_its_pruner(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}_nopruning.toml"
    path.write_text(_without_pruning(resolve_space_path(name).read_text()))
    space, reference = load_space(name), load_space(str(path))
    assert reference.pruner.name == "none"
    same = dataclasses.replace(reference, name=space.name, pruner=space.pruner)
    assert same.fingerprint() == space.fingerprint()
