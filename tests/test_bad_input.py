"""Input that used to train first and fail later, hang, or end in a traceback: each is refused up
front in one line with exit status 2, and the storage is neither created nor changed."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest

from study import report, run
from study._errors import SpaceError
from study.cost import check_memory, estimate_cost
from study.model import build_model, count_parameters
from study.space import MAX_WIDTH, load_space, space_from_dict
from tests.conftest import db_digest, write_space

LR = "[lr]\nlow = 1e-3\nhigh = 1e-1\n"
TS = "[dataset]\nname = 'teacher_student'\n"
# A space and the start of the error message that must name its field. The sizes are far
# beyond any machine (the memory cases need more than a PiB or hundreds of TiB).
BAD_SPACES = {
    "width_of_ten_million": (
        f"[model]\nwidths = [8, 10000000]\n{LR}",
        "model.widths: width 10,000,000 (100,000,760,000,010 parameters) needs about",
    ),
    "int64_width": (
        f"[model]\nwidths = [8, 9223372036854775807]\n{LR}",
        f"model.widths: must be at most {MAX_WIDTH:,}",
    ),
    "infinite_multiplier": (
        f"[model]\nwidths = [8]\nhidden_multipliers = [inf, 1]\n{LR}",
        "model.hidden_multipliers: must be positive numbers up to 16,777,216, got inf",
    ),
    "huge_multiplier": (
        f"[model]\nwidths = [8]\nhidden_multipliers = [1e308, 1]\n{LR}",
        "model.hidden_multipliers: must be positive numbers up to 16,777,216, got 1e+308",
    ),
    "multiplier_making_a_huge_layer": (
        f"[model]\nwidths = [8, 64]\nhidden_multipliers = [1e6, 1]\n{LR}",
        "model.hidden_multipliers: make a layer of 64,000,000 units at width 64",
    ),
    "hundred_million_layers": (
        f"[model]\nwidths = [8]\ndepth = 100000000\n{LR}",
        "model.depth: must be a number of hidden layers from 1 to 1,000",
    ),
    "teacher_student_too_big_for_memory": (
        f"{TS}n_samples = 1073741824\nn_features = 16384\n[model]\nwidths = [8]\n{LR}",
        "dataset.n_samples: the dataset (1,073,741,824 samples x 16,384 features) needs about",
    ),
    "teacher_student_samples_beyond_range": (
        f"{TS}n_samples = 1000000000000\n[model]\nwidths = [8]\n{LR}",
        "dataset.n_samples: must be an integer from 20 to",
    ),
    "val_fraction_leaving_no_training_samples": (
        f"{TS}n_samples = 20\nval_fraction = 0.99\n[model]\nwidths = [8]\n{LR}",
        "dataset.val_fraction: 0.99 of 20 samples leaves 20 for validation and 0 for training",
    ),
    "nan_lr_low": ("[model]\nwidths = [8]\n[lr]\nlow = nan\nhigh = 1e-1\n", "lr.low: must be"),
    "inf_lr_high": ("[model]\nwidths = [8]\n[lr]\nlow = 1e-3\nhigh = inf\n", "lr.high: must be"),
    "nan_lr_high": ("[model]\nwidths = [8]\n[lr]\nlow = 1e-3\nhigh = nan\n", "lr.high: must be"),
    "float_width": (
        f"[model]\nwidths = [8, 16.5]\n{LR}",
        "model.widths: must be a list of integers",
    ),
    "negative_epochs": (
        f"[model]\nwidths = [8]\n{LR}[training]\nepochs = -3\n",
        "training.epochs: must be an integer from 1 to",
    ),
    "billion_epochs": (
        f"[model]\nwidths = [8]\n{LR}[training]\nepochs = 1000000000\n",
        "training.epochs: must be an integer from 1 to 100,000, got 1,000,000,000",
    ),
    "huge_batch_size": (
        f"[model]\nwidths = [8]\n{LR}[training]\nbatch_size = 10000000000000\n",
        "training.batch_size: must be an integer from 1 to",
    ),
    "negative_seed": (f"seed = -1\n[model]\nwidths = [8]\n{LR}", "seed: must be an integer"),
    "infinite_weight_decay": (
        f"[model]\nwidths = [8]\n{LR}[optimizer]\nweight_decay = inf\n",
        "optimizer.weight_decay: must be a non-negative finite number",
    ),
    "cnn_too_wide_for_memory": (
        f"[model]\nfamily = 'cnn'\nwidths = [8, 1000000]\n{LR}",
        "model.widths: width 1,000,000",
    ),
}


def _refused(capsys: pytest.CaptureFixture[str], command: object, argv: list[str]) -> str:
    """Run ``command.main(argv)``: exit status 2 and one ``error:`` line, no traceback."""
    capsys.readouterr()
    assert command.main(argv) == 2  # type: ignore[attr-defined]
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + captured.out
    return err


@pytest.mark.parametrize("case", sorted(BAD_SPACES))
def test_a_space_that_cannot_train_is_refused_before_the_storage_is_made(
    case: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD_SPACES[case]
    path = write_space(workdir, case, text)
    argv = ["--space", str(path), "--storage", "sqlite:///s.db", "--trials", "2", "--quiet"]
    err = _refused(capsys, run, argv)
    assert err.startswith(f"error: {case}.toml: {expected}"), err
    assert not (workdir / "s.db").exists()


def test_a_space_too_big_for_memory_names_the_estimate_and_what_is_available(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, _ = BAD_SPACES["width_of_ten_million"]
    path = write_space(workdir, "wide", text)
    err = _refused(capsys, run, ["--space", str(path), "--trials", "2", "--quiet"])
    assert "needs about 1.4 PiB of memory on this machine" in err
    assert "available; use narrower widths" in err
    assert not (workdir / "studies.db").exists()


def _study_with_stored_space(url: str, name: str, widths: list[int]) -> None:
    """A study of this tool as an older version stored it, its space holding ``widths``."""
    space = load_space("smoke").to_dict()
    space["model"]["widths"] = widths
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name=name, storage=storage, direction="minimize")
    study.set_user_attr("space", space)
    storage.engine.dispose()


@pytest.mark.parametrize(
    ("widths", "expected"),
    [
        ([8, 10_000_000], "model.widths: width 10,000,000"),
        ([8, 2**63 - 1], "model.widths: must be at most"),
    ],
)
def test_a_stored_space_that_cannot_train_is_refused_on_resume_before_training(
    widths: list[int], expected: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _study_with_stored_space("sqlite:///s.db", "old", widths)
    before = db_digest(workdir / "s.db")
    argv = ["--storage", "sqlite:///s.db", "--study-name", "old", "--trials", "4", "--quiet"]
    err = _refused(capsys, run, argv)
    assert err.startswith(f"error: the study's stored space: {expected}"), err
    assert db_digest(workdir / "s.db") == before


def _optuna_db(path: Path) -> None:
    """A real study database of some size (no training: a quick objective)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    study = optuna.create_study(study_name="q", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=30)
    storage.engine.dispose()


def _damaged_page(path: Path) -> None:
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")  # the header's page size
    assert len(data) >= 4 * page
    data[2 * page : 3 * page] = random.Random(0).randbytes(page)
    path.write_bytes(bytes(data))


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _header_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + random.Random(0).randbytes(5000))


@pytest.mark.parametrize("damage", [_header_then_garbage, _truncated, _damaged_page])
def test_a_damaged_sqlite_file_is_one_line_and_left_as_it_is(
    damage: object, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workdir / "bad.db"
    _optuna_db(path)
    damage(path)  # type: ignore[operator]
    before = db_digest(path)
    url = "sqlite:///bad.db"
    err = _refused(capsys, run, ["--space", "smoke", "--storage", url, "--trials", "2", "--quiet"])
    assert f"storage {url}: bad.db is not a readable SQLite database (" in err, err
    assert "use a new file" in err
    err = _refused(capsys, report, ["--storage", url, "--study-name", "q", "--out", "rep"])
    assert "is not a readable SQLite database" in err
    assert db_digest(path) == before
    assert not (workdir / "rep").exists()


def test_the_report_refuses_a_multi_objective_study(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "sqlite:///mo.db"
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="mo", storage=storage, directions=["minimize"] * 2)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=3)
    storage.engine.dispose()
    before = db_digest(workdir / "mo.db")
    err = _refused(capsys, report, ["--storage", url, "--study-name", "mo", "--out", "rep"])
    assert "study 'mo' in sqlite:///mo.db optimizes minimize and minimize" in err, err
    assert db_digest(workdir / "mo.db") == before
    assert not (workdir / "rep").exists()


@pytest.mark.parametrize(
    ("family", "multipliers"), [("mlp", ""), ("mlp", "hidden_multipliers = [4, 0.5]"), ("cnn", "")]
)
def test_the_estimate_counts_the_parameters_the_model_has(
    family: str, multipliers: str, workdir: Path
) -> None:
    text = f"[model]\nfamily = '{family}'\nwidths = [8, 24]\n{multipliers}\n{LR}"
    space = load_space(str(write_space(workdir, "m", text)))
    for width in space.model.widths:
        model = build_model(space.model, width, 64, 10, (8, 8))
        assert estimate_cost(space, width).params == count_parameters(model)


def test_the_device_check_refuses_what_its_memory_cannot_hold() -> None:
    space = load_space("mlp_digits")
    cost = estimate_cost(space, 1024, stack=8)
    assert cost.model_bytes > 8 * estimate_cost(space, 1024).model_bytes * 0.99
    check_memory(space, "cpu", stack=8, available=cost.needed("cpu"))
    with pytest.raises(SpaceError, match=r"^space mlp_digits: model.widths: width 1,024 \("):
        check_memory(space, "cuda:0", stack=8, available=cost.needed("cuda") - 1)


@pytest.mark.parametrize("name", ["mlp_digits", "cnn_digits", "teacher_student", "article_64_16"])
def test_every_shipped_kind_of_space_fits_a_small_machine(name: str) -> None:
    space = load_space(name)
    check_memory(space, "cpu", stack=8, available=2**30)  # 1 GiB, every trial stacked by 8
    assert space_from_dict(space.to_dict()) == space
