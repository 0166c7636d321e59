"""No finished study crashes its report: random and degenerate studies give files, no traceback."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from study.report import make_report

LOW, HIGH = 1e-4, 1.0
FILES = ("report.html", "fit.json", "summary.csv", "loss_vs_lr.png", "lr_star_vs_width.png")


def _study(kind: str, seed: int) -> optuna.Study:
    """A finished study as study.run stores it, shaped by ``kind``."""
    rng = np.random.default_rng(seed)
    widths = sorted(rng.choice([8, 16, 32, 64, 128], size=int(rng.integers(2, 6)), replace=False))
    widths = [int(w) for w in widths]
    dists = {"width": CategoricalDistribution(widths), "lr": FloatDistribution(LOW, HIGH, log=True)}
    study = optuna.create_study(study_name=f"{kind}-{seed}")
    study.set_user_attr("space", {"model": {"widths": widths}, "lr": {"low": LOW, "high": HIGH}})
    for w in widths:
        n = 1 if kind == "one complete trial per width" else int(rng.integers(1, 9))
        x_star = rng.uniform(math.log2(LOW) - 2, math.log2(HIGH) + 2)
        for _ in range(n):
            x = rng.uniform(math.log2(LOW), math.log2(HIGH))
            if kind == "lr on a bound":
                x = float(rng.choice([math.log2(LOW), math.log2(HIGH)]))
            value = float(0.1 * math.exp(0.2 * (x - x_star) ** 2 + 0.1 * rng.standard_normal()))
            if kind == "ties":
                value = 0.5
            diverged = kind == "all diverged at a width" and w == widths[0]
            diverged = diverged or (kind == "random" and rng.random() < 0.15)
            pruned = kind == "random" and rng.random() < 0.2
            state = TrialState.PRUNED if diverged or pruned else TrialState.COMPLETE
            study.add_trial(
                create_trial(
                    state=state,
                    params={"width": w, "lr": 2.0**x},
                    distributions=dists,
                    value=value if state == TrialState.COMPLETE else None,
                    intermediate_values={1: value * 2, 2: math.inf if diverged else value},
                    user_attrs={
                        "best_val_loss": "inf" if diverged else value,
                        "diverged": diverged,
                        "epochs_run": 2,
                    },
                )
            )
    return study


CASES = [
    ("ties", 0),
    ("one complete trial per width", 1),
    ("all diverged at a width", 2),
    ("lr on a bound", 3),
    *[("random", seed) for seed in range(4, 16)],
]


@pytest.mark.parametrize(("kind", "seed"), CASES)
def test_every_finished_study_gets_its_report(workdir: Path, kind: str, seed: int) -> None:
    study = _study(kind, seed)
    out = workdir / "out"
    (rep,) = make_report(study, out, "sqlite:///x.db", n_bootstrap=50, dashboard=False)
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    for e in rep.fit.widths:
        if e.lr_star is not None:
            assert e.lr_low <= e.lr_star <= e.lr_high  # error bars are never negative
    if rep.fit.alpha is not None:
        assert rep.fit.alpha_low <= rep.fit.alpha <= rep.fit.alpha_high


def test_an_lr_star_past_its_bound_by_rounding_is_drawn(workdir: Path) -> None:
    """The crash: width 8's three trials make one parabola, so every bootstrap replicate gave
    its vertex again up to rounding, and the interval's upper bound came out 1e-17 below lr*:
    a negative error bar, which matplotlib refuses ('xerr' must not contain negative values)."""
    dists = {
        "width": CategoricalDistribution([8, 16]),
        "lr": FloatDistribution(LOW, HIGH, log=True),
    }
    study = optuna.create_study()
    study.set_user_attr("space", {"model": {"widths": [8, 16]}, "lr": {"low": LOW, "high": HIGH}})
    logs = {8: [-9.491755418915538, -2.5324705714057547, -10.106796154602387]}
    logs[16] = [-10.207085895818924, -8.501107594040425, -9.69458753410094]
    for w, xs in logs.items():
        for x in xs:
            value = 0.1 * math.exp(0.2 * (x + 7) ** 2)
            study.add_trial(
                create_trial(
                    params={"width": w, "lr": 2.0**x},
                    distributions=dists,
                    value=value,
                    user_attrs={"best_val_loss": value, "diverged": False},
                )
            )
    out = workdir / "out"
    (rep,) = make_report(study, out, "sqlite:///x.db", n_bootstrap=50, dashboard=False)
    (w8, _) = rep.fit.widths
    assert w8.lr_star == w8.lr_high  # on its bound, exactly, not past it
    assert (out / "loss_vs_lr.png").stat().st_size > 0


def test_the_dashboards_note_reads_as_written_in_plain_words() -> None:
    from study.analysis import in_plain_words
    from study.report_files import analyse_study
    from study.report_note import _md, note_markdown
    from study.space import load_space

    study = _study("random", 7)
    space = load_space("smoke").to_dict()
    space["model"]["widths"] = study.user_attrs["space"]["model"]["widths"]
    study.set_user_attr("space", {**space, "lr": study.user_attrs["space"]["lr"]})
    rep = analyse_study(study, n_bootstrap=50)
    assert rep.fit.alpha is not None
    note = note_markdown(rep, "sqlite:///x.db")
    words = in_plain_words(rep.fit)
    assert words.startswith("lr* ") and ("x from width" in words)
    assert f"**{words.replace('*', chr(92) + '*')}**" in note  # lr* shown as written, in bold
    assert "lr\\*" in note  # no stray emphasis from the * of lr*
    assert _md("mlp_digits: lr* | a`b") == "mlp\\_digits: lr\\* \\| a\\`b"
    rows = [line for line in note.splitlines() if line.startswith("| ") and "---" not in line]
    assert all(row.split("|")[-2].strip() in ("no", "low", "high") for row in rows[1:])
    lr_cells = [row.split("|")[2].strip() for row in rows[1:]]
    assert all(c == "-" or len(c.replace(".", "").lstrip("0").split("e")[0]) <= 3 for c in lr_cells)


def test_the_plain_words_say_which_way_lr_star_moves() -> None:
    from study.analysis import Fit, in_plain_words

    def fit(shift: float) -> Fit:
        return Fit(
            widths=[],
            alpha=0.6,
            alpha_low=0.5,
            alpha_high=0.7,
            shift_log2=shift,
            intercept_log2=0.0,
            used_widths=[32, 1024],
            note="",
            settings={},
            band=[],
        )

    assert in_plain_words(fit(-3.14)) == "lr* falls about 8.8x from width 32 to 1024"
    assert in_plain_words(fit(1.0)) == "lr* rises about 2x from width 32 to 1024"
    assert in_plain_words(fit(0.15)) == "lr* stays within 1.1x from width 32 to 1024"
