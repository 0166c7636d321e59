"""Coordinate check: ``python -m study.coordcheck --space NAME``.

The unit test of a muP implementation (Tensor Programs V, and the ``mup`` package's coord check):
train a few steps at widths 32...2048 and watch the size of the network's output. Under SP with
Adam the mean |logit| grows about linearly with width (log-log slope near 1); under muP it stays
flat (slope near 0). The command runs both parametrizations of the space's model, prints the
slopes and saves the figure.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from study._cli import command_parser
from study._errors import UserError
from study.data import load_dataset
from study.space import Space, load_space
from study.train import loss_function, make_model, make_optimizer, matmul_precision
from study.user_parts import prepare_space

__all__ = ["CoordCheck", "coord_check", "main"]

DEFAULT_WIDTHS = {
    "mlp": (32, 64, 128, 256, 512, 1024, 2048),
    "cnn": (8, 16, 32, 64, 128, 256),
    "gpt": (32, 64, 128, 256, 512),
}


@dataclass(frozen=True)
class CoordCheck:
    parametrization: str
    widths: list[int]
    mean_abs_output: np.ndarray  # [steps + 1, widths], averaged over seeds
    slope: float  # log-log slope of the last step's mean |output| against width


def coord_check(
    space: Space,
    parametrization: str,
    widths: Sequence[int],
    lr: float,
    steps: int = 5,
    seeds: int = 3,
    batch_size: int = 64,
) -> CoordCheck:
    """Mean |output| after 0..``steps`` optimizer steps at each width, and its slope in width.

    Args:
        space: gives the model family, depth, optimizer, data and base width.
        parametrization: "sp" or "mup" (overrides the space's).
        widths: the widths to compare.
        lr: the base learning rate of every run.
        steps: optimizer steps, each on the next minibatch of the training data.
        seeds: runs per width, averaged.
        batch_size: minibatch size; the output is measured on a fixed batch of this size.
    """
    model_cfg = dataclasses.replace(
        space.model,
        widths=tuple(widths),
        parametrization=parametrization,
        base_width=space.model.base_width_for(min(widths)),
    )
    run_space = dataclasses.replace(space, model=model_cfg)
    space = prepare_space(space)  # text: its vocabulary and context
    data = load_dataset(space.dataset, space.seed, "cpu", space.training.loss)
    loss_fn = loss_function(space)
    probe = data.x_train[:batch_size]
    out = np.zeros((steps + 1, len(widths)))
    with matmul_precision(space.training.matmul_precision):  # as the study trains
        for j, width in enumerate(widths):
            for seed in range(seeds):
                torch.manual_seed(seed)
                model = make_model(run_space, width, data)
                opt = make_optimizer(run_space, model, lr)
                for step in range(steps + 1):
                    with torch.no_grad():
                        out[step, j] += model(probe).abs().mean().item() / seeds
                    if step == steps:
                        break
                    lo = (step * batch_size) % (len(data.x_train) - batch_size)
                    x, y = data.x_train[lo : lo + batch_size], data.y_train[lo : lo + batch_size]
                    loss = loss_fn(model(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
    slope = float(np.polyfit(np.log2(widths), np.log2(out[-1]), 1)[0])
    return CoordCheck(parametrization, list(widths), out, slope)


def _figure(checks: list[CoordCheck], space: Space, lr: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(checks), figsize=(6 * len(checks), 4.5), sharey=True, layout="constrained"
    )
    for ax, c in zip(np.atleast_1d(axes), checks, strict=True):
        cmap = plt.get_cmap("viridis")
        for step, row in enumerate(c.mean_abs_output):
            ax.plot(
                c.widths,
                row,
                "o-",
                ms=3,
                color=cmap(step / max(len(c.mean_abs_output) - 1, 1)),
                label=f"step {step}",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_title(f"{c.parametrization.upper()}: slope {c.slope:+.2f} (last step)")
        ax.legend(fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("mean |output logit|")
    fig.suptitle(
        f"coord check: {space.name}, {space.model.family}, {space.optimizer.name}, lr {lr:g}"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser(
        "study.coordcheck", "Coordinate check: mean output size after a few steps, vs width."
    )
    p.add_argument("--space", default="mlp_digits", help="shipped space name or .toml path")
    p.add_argument(
        "--widths",
        default=None,
        help="comma-separated (default: 32..2048 for mlp, 8..256 for cnn, 32..512 for gpt)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="base lr (default: geometric middle of the space's lr range)",
    )
    p.add_argument("--steps", type=int, default=5, help="training steps before measuring")
    p.add_argument(
        "--out", default=None, help="figure path (default: reports/coordcheck_SPACE.png)"
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        space = prepare_space(load_space(args.space))
        try:
            widths = (
                [int(w) for w in args.widths.split(",")]
                if args.widths
                else list(DEFAULT_WIDTHS[space.model.family])
            )
        except ValueError:
            raise UserError(
                f"--widths must be comma-separated integers, got {args.widths!r}"
            ) from None
        if len(widths) < 2 or min(widths) < 1:
            raise UserError("--widths needs at least two positive widths")
        if args.steps < 1:
            raise UserError(f"--steps must be a positive integer, got {args.steps}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    lr = args.lr or float(np.sqrt(space.lr.low * space.lr.high))
    checks = [coord_check(space, par, widths, lr, args.steps) for par in ("sp", "mup")]
    out = Path(args.out or Path("reports") / f"coordcheck_{space.name}.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    _figure(checks, space, lr, out)
    for c in checks:
        print(
            f"{c.parametrization:>3}: mean |output| after {args.steps} steps ~ width^{c.slope:+.2f}"
        )
    print(f"figure: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
