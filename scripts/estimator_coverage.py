"""How honest is alpha's interval? Both estimators on simulated studies with a planted answer.

Each simulated study has six widths (32 ... 1024) whose loss valleys have their minimum at
lr*(w) = 1e-2 * (w/32)^-alpha, and trials placed roughly as the tool's per-width TPE places them
(a simplification): a width's first 4 lrs log-uniform over the range, the rest gathered around
where its sampler believes the optimum is (the true one, off by a per-width error).

Two kinds of valley:

* ``planted``: the symmetric parabola of tests/test_analysis.py, the same at every width;
* ``realistic``: what the default study's valleys look like (measured on its trials), and worse:
  a flat bottom, lopsided (flatter on the high-lr side, by a different amount at each width), a
  curvature that differs between widths (sd 30% in log), divergence beyond about 3 log2 above
  the optimum (diverged trials are not fitted), noise of 0.08 in log loss (a default study's
  points scatter 0.12-0.21 about a parabola fitted per width, misfit included).

For each kind and number of trials per width: how often the 95% interval holds the planted
alpha (coverage), its median width, and the median error, for the per-width estimator (a
parabola per width, OLS line through the vertices) and the joint one (study.joint).

    python scripts/estimator_coverage.py --studies 200
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.analysis import Point, analyze  # noqa: E402

WIDTHS = [32, 64, 128, 256, 512, 1024]
LOW, HIGH = 1e-5, 1.0


def simulate(kind: str, alpha: float, per_width: int, seed: int) -> list[Point]:
    """One simulated study's finished trials."""
    rng = np.random.default_rng(seed)
    lo, hi = math.log2(LOW), math.log2(HIGH)
    points = []
    for w in WIDTHS:
        x_star = math.log2(1e-2 * (w / 32) ** -alpha)
        belief = x_star + rng.normal(0, 0.5)
        x = np.concatenate(
            [
                rng.uniform(lo, hi, min(4, per_width)),
                np.clip(rng.normal(belief, 1.5, max(0, per_width - 4)), lo, hi),
            ]
        )
        d = x - x_star
        if kind == "planted":
            log_loss = math.log(0.1) + 0.15 * d**2 + 0.05 * rng.standard_normal(len(x))
            diverged = np.zeros(len(x), bool)
        else:
            a = 0.08 * math.exp(rng.normal(0, 0.3))
            high_side = rng.uniform(0.3, 1.0)  # the high-lr side's curvature, relative
            flat = np.maximum(0.0, np.abs(d) - 0.5)
            shape = np.where(d < 0, a * flat**2, a * high_side * flat**2)
            level = math.log(0.1) - 0.05 * math.log2(w / 32)
            log_loss = level + shape + 0.08 * rng.standard_normal(len(x))
            diverged = d > 3 + rng.normal(0, 0.5, len(x))
        for xi, yi, dv in zip(x, log_loss, diverged, strict=True):
            if dv:
                points.append(Point(w, 2.0**xi, math.inf, "diverged"))
            else:
                points.append(Point(w, 2.0**xi, math.exp(yi), "complete"))
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=200, help="simulated studies per cell")
    parser.add_argument("--bootstrap", type=int, default=300, help="bootstrap replicates")
    parser.add_argument("--alpha", type=float, default=0.65, help="the planted alpha")
    parser.add_argument(
        "--per-width", default="5,8,12,20,33", help="trials per width, comma-separated"
    )
    parser.add_argument("--kinds", default="planted,realistic", help="kinds of valley")
    args = parser.parse_args(argv)
    print(
        f"planted alpha {args.alpha}; {args.studies} studies per row; "
        f"{args.bootstrap} bootstrap replicates; 95% intervals"
    )
    print(
        f"{'valleys':10} {'trials/width':>12} {'estimator':10} {'coverage':>9} "
        f"{'median width':>12} {'median |error|':>14} {'no alpha':>8}"
    )
    started = time.perf_counter()
    for kind in args.kinds.split(","):
        for n in (int(v) for v in args.per_width.split(",")):
            for estimator in ("per_width", "joint"):
                covered = missing = 0
                widths, errors = [], []
                for s in range(args.studies):
                    points = simulate(kind, args.alpha, n, seed=10_000 * n + s)
                    fit = analyze(
                        points,
                        WIDTHS,
                        (LOW, HIGH),
                        n_bootstrap=args.bootstrap,
                        seed=s,
                        estimator=estimator,
                    )
                    if fit.alpha is None:
                        missing += 1
                        continue
                    covered += fit.alpha_low <= args.alpha <= fit.alpha_high  # type: ignore[operator]
                    widths.append(fit.alpha_high - fit.alpha_low)  # type: ignore[operator]
                    errors.append(abs(fit.alpha - args.alpha))
                fitted = args.studies - missing
                print(
                    f"{kind:10} {n:>12} {estimator:10} "
                    f"{covered / max(fitted, 1):>9.0%} {np.median(widths):>12.2f} "
                    f"{np.median(errors):>14.3f} {missing:>8}",
                    flush=True,
                )
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
