"""What a run builds from its space and its machine: the sampler, the pruner, the sampler's seed,
the device, and how many worker processes and stacked trials it uses.

Shared by the run (:mod:`study.api`), its worker processes (:mod:`study.runner`) and the bench.
"""

from __future__ import annotations

import hashlib
import os

import optuna
import torch

from study._errors import UserError
from study.sampling import PerWidthPruner, WidthStratifiedSampler
from study.space import Space

__all__ = [
    "CPU_STACK_MAX_WIDTH",
    "MAX_DEFAULT_WORKERS",
    "build_pruner",
    "build_sampler",
    "default_stack_max_width",
    "default_workers",
    "resolve_device",
    "run_seed",
]

# Stacking 8 trials wins up to this width on one CPU thread: per member, 4.6x faster than alone
# at width 32, 2.1x at 128, 1.2x at 256, 0.86x at 512 (train vs train_stacked, 4 epochs of
# mlp_digits, best of 3, AMD EPYC); on an Intel Xeon, with the hand-computed step alone
# (train.MLPStep), 1.38x at 128, 1.19x at 256, 0.91x at 512. On a GPU every width is stacked.
CPU_STACK_MAX_WIDTH = 256

# Models stacked by torch.func (study.stacked_func: the transformer, the CNN, a user's model) are
# not stacked unless --stack-max-width asks: on one CPU thread (scripts/stack_probe.py, 8 alone
# against one stack of 8, one epoch) the stack was 0.73x, 0.76x, 0.87x as fast for gpt_code at
# widths 32, 64, 128 (attention has no batching rule under vmap and runs member by member),
# 1.06x, 0.80x, 0.64x for cnn_digits at 8, 16, 32, and 2.4x, 2.0x, 1.5x, 0.79x for the example
# user MLP (examples/net.py) at 16, 64, 128, 256: it depends on the model, so a user measures
# theirs with the probe and passes --stack-max-width. Not measured on a GPU.


def build_sampler(space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """Width round-robin by count; lr by TPE (or random) on that width's trials only."""
    if space.sampler.name == "tpe":
        lr_sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            n_startup_trials=space.sampler.n_startup_trials,
            multivariate=False,
            constant_liar=True,
            seed=seed,
        )
    else:
        lr_sampler = optuna.samplers.RandomSampler(seed=seed)
    return WidthStratifiedSampler(space.model.widths, lr_sampler)


def build_pruner(space: Space) -> optuna.pruners.BasePruner:
    p = space.pruner
    pruner: optuna.pruners.BasePruner
    if p.name == "none":
        return optuna.pruners.NopPruner()
    if p.name == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    elif p.name == "percentile":
        pruner = optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    elif p.name == "successive_halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    else:
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=space.training.epochs,
            reduction_factor=p.reduction_factor,
        )
    return PerWidthPruner(pruner, protect_log2=p.protect_log2) if p.per_width else pruner


def run_seed(space: Space, n_existing: int, worker: int = 0) -> int:
    """The sampler's seed for a run (or worker) that starts with ``n_existing`` trials stored.

    A seeded sampler replays the same parameters after a resume (optuna#3255); mixing in the
    number of trials already stored keeps a fresh study reproducible and a resumed one new, and
    the worker index keeps parallel workers from proposing the same lrs.
    """
    digest = hashlib.sha256(f"{space.seed}:{n_existing}:{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def default_stack_max_width(device: torch.device, space: Space) -> int:
    """The widest width stacked when ``--stack-max-width`` is not given: for the MLP, 256 on
    CPU and every width on a GPU; for any other model none (see above)."""
    if space.model.family != "mlp" or space.model.factory is not None:
        return 0
    return CPU_STACK_MAX_WIDTH if device.type == "cpu" else max(space.model.widths)


# The most trial processes the default starts: the most one SQLite file was tested with (4
# workers, no "database is locked"). More can be asked for with --workers (PostgreSQL for many).
MAX_DEFAULT_WORKERS = 4


def default_workers(device: torch.device, threads: int, remaining: int) -> int:
    """How many trial processes a run starts when ``--workers`` is not given.

    On CPU, one per ``threads`` cores this process may use (at most ``MAX_DEFAULT_WORKERS``,
    never more than the ``remaining`` trials); on a GPU one, whose stacked trials fill it.
    """
    if device.type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores // threads, MAX_DEFAULT_WORKERS, remaining))
