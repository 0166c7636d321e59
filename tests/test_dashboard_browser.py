"""The optuna-dashboard of a study as a researcher meets it: the real dashboard process, its
pages rendered by a real headless Chromium."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from study.run import main
from tests.conftest import Dashboard, browse

URL = "sqlite:///s.db"


def _text(dom: str) -> str:
    """The page's visible text, one item per line."""
    body = re.sub(r"<script.*?</script>|<style.*?</style>", "", dom, flags=re.S)
    return "\n".join(t.strip() for t in re.split(r"<[^>]+>", body) if t.strip())


def _ticks(dom: str, axis: str) -> list[tuple[str, float]]:
    """(label, position in px) of every ``axis`` ("x" or "y") tick plotly drew, in page order."""
    found = re.findall(
        rf'<g class="{axis}tick"><text[^>]*?transform="translate\(([\d.]+),([\d.]+)\)"[^>]*>'
        r"([^<]*)</text>",
        dom,
    )
    return [(label, float(y if axis == "y" else x)) for x, y, label in found]


def test_the_dashboard_shows_the_answer_at_first_sight(
    workdir: Path, dashboard: Callable[[str, Path], Dashboard]
) -> None:
    args = ["--space", "smoke", "--trials", "30", "--storage", URL, "--workers", "1", "--quiet"]
    assert main(args) == 0
    board = dashboard(URL, workdir)
    page = board.study("smoke")
    home = f"{board.base}/dashboard/studies/{page['study_id']}"

    first = browse(home, workdir / "p1")
    text = _text(first)
    # The tool's figures, on the study's first screen; the metric has its name.
    assert re.search(r"smoke: lr\* ∝ width\^-α, α = -?\d\.\d\d \[", text), text[:2000]
    for panel in ("lr* per width (95% interval), fit and band", "best loss; lr* and fit"):
        assert panel in text
    assert "validation loss" in text and "Objective 0" not in text
    # No plot flattened by a diverged trial: every value axis stays within the losses trained
    # (a diverged epoch is stored capped; uncapped it reached hundreds).
    assert any(t["user_attrs"] and _diverged(t) for t in page["trials"]), "no diverged trial"
    history = first.split('class="main-svg"')[1]  # the first plot: History
    values = [float(label) for label, _ in _ticks(history, "y") if _number(label)]
    assert values and max(values) < 10, values

    note = _text(browse(home + "/note", workdir / "p2"))
    assert "How the optimal learning rate shifts with width" in note
    assert "What moves the loss (shares of its variation between cells): width " in note
    assert re.search(r"lr\* (falls|rises|stays)", note), note  # the plain-words line, rendered

    # Width is an ordered number on a log axis: the contour's and the rank plot's width ticks
    # 8, 16, 32 are equally spaced (a linear axis puts 32 twice as far from 16 as 16 from 8)
    # and there are ticks between them (a categorical axis ticks only the widths).
    analytics = browse(home + "/analytics", workdir / "p3")
    plots = _by_width_axis(analytics)
    assert len(plots) >= 2, "no contour and rank plot with width"
    for at in plots:
        assert abs((at["16"] - at["8"]) - (at["32"] - at["16"])) < 2, at
        assert "10" in at and at["8"] > at["10"] > at["16"], at  # y grows upwards on screen


def _diverged(trial: dict) -> bool:
    return any(a["key"] == "diverged" and a["value"] == "True" for a in trial["user_attrs"])


def _number(label: str) -> bool:
    return re.fullmatch(r"-?\d+(\.\d+)?", label) is not None


def _by_width_axis(dom: str) -> list[dict[str, float]]:
    """The y-axis tick positions of every plot whose y axis is ticked 8 ... 32 (width)."""
    plots: list[dict[str, float]] = []
    run: dict[str, float] = {}
    for label, pos in _ticks(dom, "y"):
        if label == "8" and run:
            plots.append(run)
            run = {}
        if _number(label):
            run[label] = pos
    plots.append(run)
    return [p for p in plots if {"8", "16", "32"} <= set(p)]
