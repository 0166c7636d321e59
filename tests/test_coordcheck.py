"""The coord check: output size grows with width under SP, stays flat under muP."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.coordcheck import coord_check, main
from study.space import load_space

WIDTHS = [32, 64, 128, 256, 512, 1024]


@pytest.fixture(scope="module")
def checks() -> dict[str, float]:
    space = load_space("mlp_digits")
    return {
        p: coord_check(space, p, WIDTHS, lr=1e-2, steps=5, seeds=2).slope for p in ("sp", "mup")
    }


def test_sp_output_grows_about_linearly_with_width(checks: dict[str, float]) -> None:
    assert 0.6 < checks["sp"] < 1.3


def test_mup_output_stays_flat_in_width(checks: dict[str, float]) -> None:
    assert abs(checks["mup"]) < 0.15


def test_cnn_coord_check_separates_sp_from_mup() -> None:
    space = load_space("cnn_digits")
    widths = [8, 16, 32, 64]
    sp = coord_check(space, "sp", widths, lr=3e-3, steps=5, seeds=1, batch_size=32).slope
    mup = coord_check(space, "mup", widths, lr=3e-3, steps=5, seeds=1, batch_size=32).slope
    assert sp > 0.4 and abs(mup) < 0.2


def test_command_saves_the_figure(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--space", "smoke", "--widths", "16,64", "--steps", "2", "--out", "cc.png"]) == 0
    assert (workdir / "cc.png").stat().st_size > 0
    out = capsys.readouterr().out
    assert " sp: mean |output|" in out and "mup: mean |output|" in out


def test_bad_widths_give_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--space", "smoke", "--widths", "16,x"]) == 2
    assert capsys.readouterr().err.startswith("error: --widths must be comma-separated")
