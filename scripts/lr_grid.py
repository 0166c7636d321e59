"""The ground truth a study's lr* estimate is judged by: every width trained on a fine grid of
learning rates, several seeds each, no pruning; lr* is the minimum of the seed-averaged curve.

    python scripts/lr_grid.py --space mlp_digits --seeds 3 --out bench/grid.json \
        --compare sqlite:///bench/reference.db:mlp_digits_nopruning --windows 2,3,4

Each (width, lr, seed) is one training run as a trial would do it (``study.train.train``, the
space's epochs, its value the best validation loss), in one process per core with one thread
each. Per width, the mean over seeds of log(value) at each grid lr gives the curve. Its bottom
is flat (lrs 1-2 log2 units apart end within a few percent of each other), so its lowest point
is noise; the grid's lr* is the middle of the valley: the midpoint, in log2 lr, of the grid lrs
whose mean loss is within ``--tolerance`` of the lowest. (The vertex of the parabola through the
lowest point and its neighbours is printed too.) ``--compare`` then estimates lr* from the
complete trials of each given study (``STORAGE_URL:STUDY_NAME``) with the report's estimator at
each of ``--windows`` (its half-width in log2 units) and prints how far each estimate lies from
the grid's, and how much the studies disagree with each other: the estimator's error measured
on real studies, not on a planted curve.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from study.space import Space, load_space

_SPACE: Space | None = None
_DATA: Any = None  # the space's dataset, loaded once per worker process


def _init(space_name: str) -> None:
    import torch

    from study.data import load_dataset

    global _SPACE, _DATA
    torch.set_num_threads(1)
    _SPACE = load_space(space_name)
    _DATA = load_dataset(_SPACE.dataset, _SPACE.seed, "cpu")


def _run(job: tuple[int, float, int]) -> tuple[int, float, int, float]:
    from study.train import train

    assert _SPACE is not None
    width, lr, seed = job
    r = train(_SPACE, _DATA, width, lr, seed)
    value = r.best_val_loss if not r.diverged and math.isfinite(r.best_val_loss) else math.inf
    return width, lr, seed, value


def valley_middle(log2_lrs: np.ndarray, mean_log_loss: np.ndarray, tolerance: float) -> float:
    """log2 lr* of a curve on a grid: the middle of the lrs within ``tolerance`` of its lowest."""
    ok = log2_lrs[mean_log_loss <= mean_log_loss.min() + math.log1p(tolerance)]
    return float((ok.min() + ok.max()) / 2)


def grid_vertex(log2_lrs: np.ndarray, mean_log_loss: np.ndarray) -> float:
    """log2 of the vertex of the parabola through the curve's lowest point and its neighbours."""
    i = int(np.argmin(mean_log_loss))
    if i == 0 or i == len(log2_lrs) - 1:
        return float(log2_lrs[i])
    a, b, _ = np.polyfit(log2_lrs[i - 1 : i + 2], mean_log_loss[i - 1 : i + 2], 2)
    return float(-b / (2 * a))


def _study_points(url: str, name: str, widths: list[int]) -> dict[int, tuple[np.ndarray, ...]]:
    """(log2 lr, log loss) of each width's complete trials, as the report's estimator takes them."""
    import optuna

    from study.analysis import points_from_trials

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    points = points_from_trials(optuna.load_study(study_name=name, storage=url).trials)
    out = {}
    for w in widths:
        pts = [
            p for p in points if p.width == w and p.state == "complete" and 0 < p.value < math.inf
        ]
        out[w] = (np.log2([p.lr for p in pts]), np.log([p.value for p in pts]))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/lr_grid.py", description=__doc__)
    p.add_argument("--space", default="mlp_digits")
    p.add_argument("--widths", default="", help="comma-separated (default: the space's)")
    p.add_argument("--low", type=float, default=-14.0, help="log2 of the grid's lowest lr")
    p.add_argument("--high", type=float, default=-4.0, help="log2 of the grid's highest lr")
    p.add_argument("--step", type=float, default=0.5, help="grid step, log2 units")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="bench/grid.json", help="where the grid's results go")
    p.add_argument("--reuse", action="store_true", help="read --out instead of training")
    p.add_argument(
        "--tolerance", type=float, default=0.05, help="the valley: within this of the lowest loss"
    )
    p.add_argument("--compare", nargs="*", default=[], metavar="STORAGE_URL:STUDY_NAME")
    p.add_argument("--windows", default="2", help="estimator half-widths to compare (log2)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    space = load_space(args.space)
    widths = [int(w) for w in args.widths.split(",")] if args.widths else list(space.model.widths)
    out = Path(args.out)
    if args.reuse:
        res = json.loads(out.read_text())
    else:
        n = int(round((args.high - args.low) / args.step)) + 1
        log2_lrs = [args.low + i * args.step for i in range(n)]
        jobs = [
            (w, 2.0**x, 1_000_000 + s) for w in widths for x in log2_lrs for s in range(args.seeds)
        ]
        jobs.sort(key=lambda j: -j[0])  # widest first: the pool ends on short runs
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(args.workers, initializer=_init, initargs=(args.space,)) as pool:
            runs = pool.map(_run, jobs, chunksize=1)
        res = {"space": space.name, "seeds": args.seeds, "log2_lrs": log2_lrs, "widths": {}}
        for w in widths:
            curve = [
                float(np.mean([math.log(v) for ww, lr, _, v in runs if ww == w and lr == 2.0**x]))
                for x in log2_lrs
            ]
            res["widths"][str(w)] = {"mean_log_loss": curve}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
    grid_x = np.array(res["log2_lrs"])
    curves = {int(w): np.array(v["mean_log_loss"]) for w, v in res["widths"].items()}
    truth = {w: valley_middle(grid_x, c, args.tolerance) for w, c in sorted(curves.items())}
    vertex = {w: grid_vertex(grid_x, c) for w, c in sorted(curves.items())}
    xs = np.log2(list(truth))
    print(f"grid: {res['seeds']} seeds at {len(grid_x)} lrs, 2^{grid_x[0]:g}..2^{grid_x[-1]:g}")
    for label, lrs in (
        (f"valley middle ({args.tolerance:.0%})", truth),
        ("lowest point's vertex", vertex),
    ):
        alpha = -np.polyfit(xs, list(lrs.values()), 1)[0]
        cells = "  ".join(f"{w}: {x:+.2f}" for w, x in lrs.items())
        print(f"{label:<22} log2 lr*  {cells}  alpha {alpha:.2f}")
    if not args.compare:
        return 0
    from study.analysis import estimate_lr_star

    windows = [float(x) for x in args.windows.split(",")]
    print("estimate - valley middle (log2) per width, from each study's complete trials:")
    print(f"{'window':>6} {'study':<40} " + " ".join(f"{w:>6}" for w in sorted(truth)) + "  alpha")
    errors: dict[float, list[float]] = {k: [] for k in windows}
    per_width: dict[float, dict[int, list[float]]] = {k: {w: [] for w in truth} for k in windows}
    for spec in args.compare:
        url, name = spec.rsplit(":", 1)
        pts = _study_points(url, name, sorted(truth))
        for k in windows:
            est: dict[int, float] = {}
            for w, (x, y) in pts.items():
                if len(x) >= 3:
                    est[w] = estimate_lr_star(x, y, k)[0]
            cells = [f"{est[w] - truth[w]:+6.2f}" if w in est else "     -" for w in sorted(truth)]
            errors[k] += [est[w] - truth[w] for w in est]
            for w in est:
                per_width[k][w].append(est[w])
            a = (
                -np.polyfit(np.log2(list(est)), list(est.values()), 1)[0]
                if len(est) > 1
                else math.nan
            )
            print(f"{k:6g} {name[-40:]:<40} " + " ".join(cells) + f"  {a:5.2f}")
    for k, e in errors.items():
        e_arr = np.abs(np.array(e))
        spread = [float(np.std(v)) for v in per_width[k].values() if len(v) > 1]
        between = f"sd per width {np.mean(spread):.2f} (mean)" if spread else "-"
        print(
            f"window {k:g}: mean |error| {e_arr.mean():.2f}, largest {e_arr.max():.2f}, "
            f"mean error {np.mean(e):+.2f}, within 0.5 log2: {np.mean(e_arr <= 0.5):.0%} "
            f"of {len(e)}; between studies, {between}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
