"""Does stacking win for a space's model? 8 trials trained one after another against one stack
of 8 (study.stacked_func for the transformer, a CNN or a user's model; study.stacked for the
MLP), one epoch each, one torch thread, the faster of 2 repeats; per width.

    python scripts/stack_probe.py gpt_code --widths 32,64,128
    python scripts/stack_probe.py examples/space.toml --widths 16,64,256

The widest width at which the stack wins is the --stack-max-width to run that model with (the
MLP's default is study.builders.CPU_STACK_MAX_WIDTH; other models stack only when asked).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from study.data import load_dataset  # noqa: E402
from study.space import load_space, with_changes  # noqa: E402
from study.stacked import can_stack, train_stacked  # noqa: E402
from study.stacked_func import train_stacked_any  # noqa: E402
from study.train import train  # noqa: E402
from study.user_parts import prepare_space  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("space", help="shipped space name or .toml path")
    parser.add_argument("--widths", required=True, help="comma-separated widths")
    parser.add_argument("--k", type=int, default=8, help="trials per stack (default: 8)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*batching rule.*")  # SDPA under vmap: measured
    path = Path(args.space)
    if path.suffix == ".toml":
        os.chdir(path.resolve().parent)
        args.space = path.name
    space = load_space(args.space)
    space = prepare_space(with_changes(space, {"training.epochs": 1, "training.patience": 0}))
    data = load_dataset(space.dataset, space.seed, loss=space.training.loss)
    stacked = train_stacked if can_stack(space) else train_stacked_any
    lrs = [1e-3 * 1.3**i for i in range(args.k)]
    seeds = list(range(args.k))
    for w in (int(v) for v in args.widths.split(",")):
        alone = together = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            for lr, seed in zip(lrs, seeds, strict=True):
                train(space, data, w, lr, seed)
            alone = min(alone, time.perf_counter() - t)
            t = time.perf_counter()
            stacked(space, data, w, lrs, seeds)
            together = min(together, time.perf_counter() - t)
        print(
            f"{space.name} width {w}: {args.k} alone {alone:.2f} s, one stack {together:.2f} s: "
            f"the stack is {alone / together:.2f}x as fast",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
