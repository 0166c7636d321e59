from __future__ import annotations

import json
from pathlib import Path

import pytest

from study._errors import SpaceError
from study.run import main
from study.space import available_spaces, load_space, space_diff, space_from_dict
from tests.conftest import write_space

VALID = """
[model]
widths = [8, 16]
[lr]
low = 1e-3
high = 1e-1
"""


@pytest.mark.parametrize("name", available_spaces())
def test_every_shipped_space_loads(name: str) -> None:
    space = load_space(name)
    assert space.name == name
    assert space.lr.low < space.lr.high


def test_shipped_spaces_include_default_and_smoke() -> None:
    assert {"mlp_digits", "smoke"} <= set(available_spaces())


def test_default_space_spans_32_to_1024_in_powers_of_two() -> None:
    widths = load_space("mlp_digits").model.widths
    assert widths[0] == 32 and widths[-1] >= 1024
    assert all(b == 2 * a for a, b in zip(widths, widths[1:], strict=False))


def test_space_name_resolves_from_any_folder(workdir: Path) -> None:
    assert load_space("smoke").model.widths == (8, 16, 32)


def test_path_to_a_space_file_is_accepted(workdir: Path) -> None:
    path = write_space(workdir, "mine", VALID)
    space = load_space(str(path))
    assert space.name == "mine" and space.model.widths == (8, 16)
    assert space.training.epochs == 20  # default filled in


def test_fingerprint_ignores_name_and_description(workdir: Path) -> None:
    a = load_space(str(write_space(workdir, "a", VALID)))
    b = load_space(str(write_space(workdir, "b", 'description = "x"\n' + VALID)))
    c = load_space(str(write_space(workdir, "c", VALID.replace("1e-1", "2e-1"))))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


BAD = {
    "unknown_key": (VALID + "colour = 'red'\n", "lr.colour: unknown key"),
    "unknown_section": ("[trainer]\nepochs = 3\n" + VALID, "trainer: unknown key"),
    "wrong_type": (
        VALID.replace("widths = [8, 16]", "widths = 'wide'"),
        "model.widths: must be a list",
    ),
    "wrong_item_type": (
        VALID.replace("[8, 16]", "[8, 'x']"),
        "model.widths: must be a list of integers",
    ),
    "low_not_below_high": (VALID.replace("1e-1", "1e-4"), "lr.low: must be less than lr.high"),
    "non_positive_width": (VALID.replace("[8, 16]", "[0, 16]"), "model.widths: must be positive"),
    "negative_lr": (VALID.replace("low = 1e-3", "low = -1.0"), "lr.low: must be a positive number"),
    "missing_lr": ("[model]\nwidths = [8]\n", "lr: is required"),
    "bad_choice": (VALID + "[optimizer]\nname = 'lion'\n", "optimizer.name: must be one of 'adam'"),
    "bool_for_int": (VALID + "[training]\nepochs = true\n", "training.epochs: must be an integer"),
    "not_toml": ("[model\nwidths = [", "not valid TOML"),
    "bad_matmul_precision": (
        VALID + "[training]\nmatmul_precision = 'bf16'\n",
        "training.matmul_precision: must be one of 'highest', 'high', 'medium'",
    ),
    "negative_patience": (
        VALID + "[training]\npatience = -1\n",
        "training.patience: must be a non-negative integer (0: off)",
    ),
    "bad_percentile": (
        VALID + "[pruner]\nname = 'percentile'\npercentile = 100\n",
        "pruner.percentile: must be in (0, 100)",
    ),
    "negative_protect": (
        VALID + "[pruner]\nprotect_log2 = -1\n",
        "pruner.protect_log2: must be a non-negative number",
    ),
    "protect_without_per_width": (
        VALID + "[pruner]\nper_width = false\nprotect_log2 = 2\n",
        "pruner.protect_log2: needs per_width = true",
    ),
}


def test_spaces_without_the_later_pruner_fields_keep_their_stored_form(workdir: Path) -> None:
    """Studies stored before pruner.percentile and pruner.protect_log2 existed must still
    compare equal and resume."""
    plain = load_space(str(write_space(workdir, "plain", VALID)))
    assert "percentile" not in plain.to_dict()["pruner"]
    assert "protect_log2" not in plain.to_dict()["pruner"]
    text = VALID + "[pruner]\nname = 'percentile'\npercentile = 75\nprotect_log2 = 1.5\n"
    p75 = load_space(str(write_space(workdir, "p75", text)))
    assert p75.to_dict()["pruner"]["percentile"] == 75
    assert p75.to_dict()["pruner"]["protect_log2"] == 1.5
    assert p75.fingerprint() != load_space(str(write_space(workdir, "p", VALID))).fingerprint()
    assert load_space("mlp_digits").pruner.protect_log2 == 4


def test_matmul_precision_is_stored_only_when_it_is_not_the_default(workdir: Path) -> None:
    """Studies stored before training.matmul_precision existed multiplied in fp32 ("highest"):
    their stored form has no such key, and they must still compare equal and resume."""
    plain = load_space(str(write_space(workdir, "plain", VALID)))
    assert plain.training.matmul_precision == "highest"
    assert "matmul_precision" not in plain.to_dict()["training"]
    text = VALID + "[training]\nmatmul_precision = 'medium'\n"
    medium = load_space(str(write_space(workdir, "medium", text)))
    assert medium.to_dict()["training"]["matmul_precision"] == "medium"
    assert medium.fingerprint() != plain.fingerprint()
    assert space_from_dict(medium.to_dict()) == medium


def test_patience_is_stored_only_when_early_stopping_is_on(workdir: Path) -> None:
    """Studies stored before training.patience existed trained every epoch (0: off)."""
    plain = load_space(str(write_space(workdir, "plain", VALID)))
    assert plain.training.patience == 0 and "patience" not in plain.to_dict()["training"]
    early = load_space(str(write_space(workdir, "early", VALID + "[training]\npatience = 4\n")))
    assert early.to_dict()["training"]["patience"] == 4
    assert early.fingerprint() != plain.fingerprint()
    assert space_from_dict(early.to_dict()) == early


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_space_gives_one_line_error_and_touches_no_storage(
    case: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = BAD[case]
    path = write_space(workdir, case, text)
    status = main(["--space", str(path), "--trials", "2", "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert f"{case}.toml" in err and expected in err, err
    assert "Traceback" not in err
    assert not (workdir / "studies.db").exists()


def test_unknown_space_name_lists_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--space", "no_such_space", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown space 'no_such_space'" in err and "mlp_digits" in err


@pytest.mark.parametrize("name", available_spaces())
def test_a_stored_space_is_rebuilt_exactly(name: str) -> None:
    """A study resumed without --space runs on the space it stored: the rebuilt space must be
    the stored one, field for field (its fingerprint too)."""
    space = load_space(name)
    rebuilt = space_from_dict(json.loads(json.dumps(space.to_dict())))  # as the storage keeps it
    assert rebuilt == space and rebuilt.fingerprint() == space.fingerprint()


def test_a_stored_space_this_version_cannot_read_is_one_line() -> None:
    stored = load_space("smoke").to_dict()
    stored["pruner"]["patience"] = 3  # a key of some other version
    with pytest.raises(
        SpaceError, match=r"^the study's stored space: pruner.patience: unknown key"
    ):
        space_from_dict(stored)


def test_the_shipped_bf16_space_is_the_default_study_but_for_its_matmul_precision() -> None:
    """mlp_digits_bf16 is compared with mlp_digits (docs/speed.md, "Matmul precision"): nothing else
    may differ, or the comparison measures something else too."""
    default, bf16 = load_space("mlp_digits"), load_space("mlp_digits_bf16")
    assert bf16.training.matmul_precision == "medium"
    assert space_diff(default.to_dict(), bf16.to_dict()) == ["training.matmul_precision"]


@pytest.mark.parametrize("name", available_spaces())
def test_a_space_written_as_toml_reads_back_as_the_same_space(name: str, tmp_path: Path) -> None:
    from study.space import space_to_toml

    space = load_space(name)
    path = tmp_path / "again.toml"
    path.write_text(space_to_toml(space))
    assert load_space(str(path)) == space


def test_changes_to_a_space_are_validated_as_a_file_is() -> None:
    from study.space import with_changes

    space = with_changes(load_space("smoke"), {"pruner.name": "none", "training.epochs": 5})
    assert (space.pruner.name, space.training.epochs) == ("none", 5)
    with pytest.raises(SpaceError, match="lr.colour: unknown key"):
        with_changes(space, {"lr.colour": "red"})
    with pytest.raises(SpaceError, match="training.epochs"):
        with_changes(space, {"training.epochs": 0})
