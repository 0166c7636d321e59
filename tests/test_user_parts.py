"""The study on a user's own model and data (study.user_parts): examples/ run from an empty
folder, resumed after kill -9, through the CLI and the Python API; every bad input refused in
one line before anything is stored; changed data refused on resume; mse; a mup-package model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from optuna.trial import TrialState

from study import run_study
from study.run import main
from tests.conftest import REPO, fault_env, fault_taken, load, spawn

URL = "sqlite:///s.db"
EXAMPLE = REPO / "examples"


@pytest.fixture
def folder(workdir: Path) -> Path:
    """An empty folder holding only the example's net.py, data.csv and space.toml."""
    for name in ("net.py", "data.csv", "space.toml"):
        shutil.copy(EXAMPLE / name, workdir / name)
    return workdir


def _finished(name: str = "my_model") -> list:
    return [
        t for t in load(URL, name).trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    ]


def test_the_example_runs_with_two_workers_resumes_after_kill_and_reports(folder: Path) -> None:
    args = ("--space", "space.toml", "--storage", URL, "--workers", "2", "--heartbeat", "1")
    token = folder / "fault"
    killed = spawn(*args, "--trials", "30", cwd=folder, env=fault_env("kill@3", token))
    pid, _ = fault_taken(token, killed)  # the run, or its worker, killed mid-trial
    killed.communicate(timeout=300)  # a killed worker's run goes on with the other process
    done = spawn(*args, "--trials", "30", cwd=folder)
    out, _ = done.communicate(timeout=600)
    assert done.returncode == 0, out
    assert len(_finished()) == 30
    fit = json.loads(next((folder / "reports").glob("my_model*/fit.json")).read_text())
    assert [w["width"] for w in fit["widths"]] == [16, 32, 64, 128, 256]
    assert fit["alpha"] is not None and fit["alpha_low"] <= fit["alpha"] <= fit["alpha_high"]
    assert sum(w["lr_star"] is not None for w in fit["widths"]) >= 2


def test_the_example_through_the_python_api(folder: Path) -> None:
    result = run_study(space="space.toml", trials=10, storage=URL, workers=1, quiet=True)
    assert result.status == 0 and result.report is not None
    assert len(_finished()) == 10
    stored = result.study.user_attrs["space"]
    assert stored["model"]["factory"] == "net:build" and len(stored["dataset"]["sha256"]) == 64
    assert stored["dataset"]["n_features"] == 8 and stored["dataset"]["n_classes"] == 3


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


BAD = {
    "no module": (("space.toml", '"net:build"', '"nope:build"'), "no module 'nope'"),
    "no function": (("space.toml", '"net:build"', '"net:nope"'), "module net has no 'nope'"),
    "not callable": (("net.py", "def build(", "CONST = 3\n\n\ndef build("), None),
    "raises": (
        ("net.py", '    """Two hidden', '    raise ValueError("bad width")\n    """'),
        "raised ValueError at width 16: bad width",
    ),
    "not a module": (
        ("net.py", "    return nn.Sequential(", "    return 3\n    return ("),
        "returned a int at width 16, not a torch.nn.Module",
    ),
    "wrong outputs": (
        ("net.py", "nn.Linear(width, 3)", "nn.Linear(width, 5)"),
        "outputs (8, 5) for a batch of 8; the data needs (8, 3)",
    ),
    "missing file": (("space.toml", '"data.csv"', '"missing.csv"'), "missing.csv: no such file"),
    "no target": (
        ("space.toml", 'target = "label"', 'target = "y"'),
        "dataset.target = 'y': no such column",
    ),
    "mup on a plain model": (("space.toml", "[dataset]", "[dataset]\n"), None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_or_data_is_one_line_and_stores_nothing(
    case: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (file, old, new), says = BAD[case]
    _edit(folder / file, old, new)
    if case == "not callable":
        _edit(folder / "space.toml", '"net:build"', '"net:CONST"')
        says = "CONST is a int, not a function"
    if case == "mup on a plain model":
        _edit(folder / "space.toml", "widths = [", 'parametrization = "mup"\nwidths = [')
        says = "parametrization = 'mup' needs a model built with the mup package"
    assert main(["--space", "space.toml", "--trials", "4", "--storage", URL, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not (folder / "s.db").exists()


DATA = {
    "empty": ("x0,label\n", "no data rows under its header"),
    "nan": ("x0,label\n1,0\nnan,1\n2,0\n3,1\n", "X holds NaN or infinite values"),
    "text feature": ("x0,label\n1,0\nabc,1\n", "a feature is not a number"),
    "ragged": ("x0,label\n1,0\n2\n", "row 3 has 1 fields, the header 2"),
    "too few rows": ("x0,label\n1,0\n2,1\n", "too few to split"),
    "one class": ("x0,label\n1,0\n2,0\n3,0\n4,0\n5,0\n", "every label is 0"),
    "fractional labels": ("x0,label\n1,0.5\n2,1.5\n3,0.5\n4,1.5\n", "needs class labels"),
    "not utf-8": (b"x0,label\n\xff\xfe,1\n", "cannot read it"),
}


@pytest.mark.parametrize("case", list(DATA))
def test_bad_data_files_are_one_line_and_store_nothing(
    case: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, says = DATA[case]
    data = folder / "data.csv"
    data.write_bytes(text) if isinstance(text, bytes) else data.write_text(text)
    _edit(folder / "net.py", "nn.Linear(8, width)", "nn.Linear(1, width)")
    assert main(["--space", "space.toml", "--trials", "4", "--storage", URL, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not (folder / "s.db").exists()


def test_mse_refuses_text_labels(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (folder / "data.csv").write_text("x0,label\n1,a\n2,b\n3,a\n4,b\n5,a\n")
    _edit(folder / "space.toml", "patience = 4", 'patience = 4\nloss = "mse"')
    assert main(["--space", "space.toml", "--trials", "4", "--storage", URL, "--quiet"]) == 2
    assert "mse needs numeric targets" in capsys.readouterr().err


def test_a_resume_on_changed_data_is_refused_and_the_study_kept(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--space", "space.toml", "--storage", URL, "--workers", "1", "--quiet"]
    assert main([*args, "--trials", "5", "--no-report"]) == 0
    lines = (folder / "data.csv").read_text().splitlines()
    (folder / "data.csv").write_text("\n".join(lines[:-1]) + "\n")  # one row less
    capsys.readouterr()
    assert main([*args, "--trials", "10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dataset.sha256" in err, err
    assert len(_finished()) == 5
    # Without --space (the stored space): refused too, saying the data changed.
    assert main(["--storage", URL, "--study-name", "my_model", "--trials", "10", "--quiet"]) == 2
    assert "the data changed since the study was made" in capsys.readouterr().err


def test_regression_targets_train_under_mse(folder: Path) -> None:
    rows = ["x0,x1,target"] + [
        f"{i / 50:.3f},{(i % 7) / 7:.3f},{2 * i / 50 - 1:.3f}" for i in range(200)
    ]
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    _edit(folder / "net.py", "nn.Linear(8, width)", "nn.Linear(2, width)")
    _edit(folder / "net.py", "nn.Linear(width, 3)", "nn.Linear(width, 1)")
    _edit(folder / "space.toml", 'target = "label"', 'target = "target"')
    _edit(folder / "space.toml", "patience = 4", 'patience = 4\nloss = "mse"')
    assert (
        main(
            [
                "--space",
                "space.toml",
                "--trials",
                "10",
                "--storage",
                URL,
                "--workers",
                "1",
                "--quiet",
                "--no-report",
            ]
        )
        == 0
    )
    done = [t for t in _finished() if t.state == TrialState.COMPLETE]
    assert done and all(0 <= t.value < float("inf") for t in done)
    assert load(URL, "my_model").user_attrs["space"]["training"]["loss"] == "mse"


MUP_NET = """
import mup
from torch import nn


def build(width: int) -> nn.Module:
    def make(w: int) -> nn.Module:
        return nn.Sequential(nn.Linear(8, w), nn.ReLU(), nn.Linear(w, w), nn.ReLU(),
                             mup.MuReadout(w, 3))
    model = make(width)
    mup.set_base_shapes(model, make(16), delta=make(32))
    return model
"""


def test_a_mup_package_model_trains_under_mup(folder: Path) -> None:
    if os.environ.get("REQUIRE_MUP") is None:
        pytest.importorskip("mup")
    (folder / "net.py").write_text(MUP_NET)
    _edit(folder / "space.toml", "widths = [", 'parametrization = "mup"\nwidths = [')
    assert (
        main(
            [
                "--space",
                "space.toml",
                "--trials",
                "10",
                "--storage",
                URL,
                "--workers",
                "1",
                "--quiet",
                "--no-report",
            ]
        )
        == 0
    )
    assert len(_finished()) == 10


ODD_NET = """
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass
class Shape:
    inputs: int = 8
    classes: int = 3


class Net(nn.Module):
    def __init__(self, width: int, shape: Shape) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(shape.inputs, width), nn.ReLU())
        self.head = nn.Linear(width, shape.classes)
        self.unused_head = nn.Linear(width, 7)  # never called: its parameters get no gradient
        self.body[0].bias.requires_grad_(False)  # frozen

    def forward(self, x):
        return self.head(self.body(x))


def build(width: int) -> nn.Module:
    return Net(width, Shape())
"""


def test_a_module_with_dataclasses_frozen_and_unused_parameters_trains(folder: Path) -> None:
    (folder / "net.py").write_text(ODD_NET)
    args = ["--space", "space.toml", "--trials", "5", "--storage", URL, "--workers", "1"]
    assert main([*args, "--quiet", "--no-report"]) == 0
    assert len(_finished()) == 5


def test_a_data_factory_is_found_beside_the_space_from_any_folder(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "mydata.py").write_text(
        "import numpy as np\n\n\ndef load():\n"
        "    rng = np.random.default_rng(0)\n"
        "    x = rng.standard_normal((300, 8))\n"
        "    return x, (x[:, 0] > 0).astype(int) + (x[:, 1] > 1)\n"
    )
    _edit(folder / "space.toml", 'path = "data.csv"', 'factory = "mydata:load"')
    _edit(folder / "space.toml", 'target = "label"\n', "")
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["--space", "../space.toml", "--trials", "5", "--storage", "sqlite:///e.db"]
    assert main([*args, "--workers", "1", "--quiet", "--no-report"]) == 0


def test_a_copied_folder_resumes_the_same_study(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--space", "space.toml", "--storage", URL, "--workers", "1", "--quiet", "--no-report"]
    assert main([*args, "--trials", "4"]) == 0
    copy = folder.parent / (folder.name + "-copy")
    shutil.copytree(folder, copy)
    monkeypatch.chdir(copy)  # the same files and study database, in another folder
    assert main([*args, "--trials", "6"]) == 0
    assert len([t for t in load(URL, "my_model").trials if t.state.is_finished()]) == 6


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("return [[1, 2], [3]], [0, 1]", "returned arrays numpy cannot read"),
        ("return 3.0, [0, 1]", "returned a single number, not an array"),
        ("return [[1.0], [2.0]]", "must return (X, y) or (X, y, X_val, y_val)"),
    ],
)
def test_a_data_factory_returning_odd_things_is_one_line(
    body: str, says: str, folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "odd.py").write_text(f"def load():\n    {body}\n")
    _edit(folder / "space.toml", 'path = "data.csv"', 'factory = "odd:load"')
    assert main(["--space", "space.toml", "--trials", "4", "--storage", URL, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert not (folder / "s.db").exists()
