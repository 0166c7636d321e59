"""One training run: a model at one width, trained at one learning rate, evaluated every epoch.

Knows nothing of Optuna: the caller gets each epoch's result through ``on_epoch`` and returns
``True`` to stop (a pruned trial). The data stays on the device; the only host syncs are one per
epoch (train loss, validation loss and accuracy read together).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from study.data import Dataset
from study.model import Model, build_model, count_parameters, param_groups
from study.space import Space

__all__ = ["EpochResult", "TrainResult", "make_optimizer", "train"]

# Devices where torch.optim has fused Adam/AdamW/SGD kernels.
FUSED_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class EpochResult:
    epoch: int  # 1-based: epochs completed
    train_loss: float  # mean over the epoch's minibatches
    val_loss: float
    val_accuracy: float
    lr: float  # the learning rate used during this epoch (after any schedule)
    diverged: bool


@dataclass
class TrainResult:
    best_val_loss: float  # the trial's value: lowest validation loss over the epochs run
    best_epoch: int
    val_accuracy: float  # at the best epoch
    final_val_loss: float
    final_train_loss: float
    initial_val_loss: float  # before any step; the yardstick for divergence
    epochs_run: int
    diverged: bool
    stopped: bool  # on_epoch asked to stop (pruned)
    n_params: int
    seconds: float  # the whole run, as the caller waits for it
    curve: list[float] = field(default_factory=list)  # validation loss per epoch
    # Parts of ``seconds`` (host clock; exact on CPU, where every op is synchronous): the
    # per-epoch evaluation, and the caller's ``on_epoch`` (storage writes, the pruner).
    eval_seconds: float = 0.0
    callback_seconds: float = 0.0


def make_optimizer(space: Space, model: Model, lr: float) -> torch.optim.Optimizer:
    """The space's optimizer, with per-layer groups under muP (see :mod:`study.model`)."""
    opt = space.optimizer
    groups = param_groups(model, opt.name, lr, opt.weight_decay)
    # The fused kernels do a step in one pass over each tensor: 1.6x faster an epoch at width
    # 1024 on one CPU thread than the default foreach path (python -m study.bench), same rule.
    device = next(model.parameters()).device
    fused = {"fused": True} if device.type in FUSED_DEVICES else {}
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=lr, **fused)
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fused)
    return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, **fused)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(dim=1) == y).float().mean()
    return loss, acc


def train(
    space: Space,
    data: Dataset,
    width: int,
    lr: float,
    seed: int,
    on_epoch: Callable[[EpochResult], bool] | None = None,
) -> TrainResult:
    """Train one model for ``space.training.epochs`` epochs (fewer if stopped or diverged).

    Args:
        space: the validated search space (model, optimizer, training settings).
        data: the dataset, already on the training device.
        width: hidden width of the model.
        lr: base learning rate.
        seed: fixes initialization and minibatch order.
        on_epoch: called after each epoch; returning True stops training (pruning). It is
            called for the epoch that diverged too (``diverged=True``), and the run ends there.
    """
    start = time.perf_counter()
    device = data.x_train.device
    torch.manual_seed(seed)
    model = build_model(space.model, width, data.n_features, data.n_classes, data.image_shape).to(
        device
    )
    optimizer = make_optimizer(space, model, lr)
    first_group_lr = optimizer.param_groups[0]["lr"]
    cfg = space.training
    scheduler: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
    if cfg.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    elif cfg.schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    else:
        scheduler = None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    initial_val_loss = float(_evaluate(model, data.x_val, data.y_val)[0])
    limit = cfg.divergence_factor * initial_val_loss
    n = data.x_train.shape[0]
    result = TrainResult(
        best_val_loss=math.inf,
        best_epoch=0,
        val_accuracy=0.0,
        final_val_loss=math.nan,
        final_train_loss=math.nan,
        initial_val_loss=initial_val_loss,
        epochs_run=0,
        diverged=False,
        stopped=False,
        n_params=count_parameters(model),
        seconds=0.0,
    )
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        n_batches = 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            n_batches += 1
        model.eval()
        t_eval = time.perf_counter()
        val_loss_t, val_acc_t = _evaluate(model, data.x_val, data.y_val)
        epoch_lr = lr * optimizer.param_groups[0]["lr"] / first_group_lr  # after the schedule
        # The one host sync of the epoch.
        train_loss, val_loss, val_acc = torch.stack(
            [loss_sum / n_batches, val_loss_t, val_acc_t]
        ).tolist()
        t_callback = time.perf_counter()
        result.eval_seconds += t_callback - t_eval
        diverged = (
            not (math.isfinite(train_loss) and math.isfinite(val_loss))
            or max(train_loss, val_loss) > limit
        )
        result.epochs_run = epoch
        result.final_val_loss = val_loss
        result.final_train_loss = train_loss
        result.curve.append(val_loss)
        if not diverged and val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch, result.val_accuracy = val_loss, epoch, val_acc
        ep = EpochResult(epoch, train_loss, val_loss, val_acc, epoch_lr, diverged)
        stop = on_epoch(ep) if on_epoch is not None else False
        result.callback_seconds += time.perf_counter() - t_callback
        if diverged:
            result.diverged = True
            break
        if stop:
            result.stopped = True
            break
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(val_loss)
        elif scheduler is not None:
            scheduler.step()
    result.seconds = time.perf_counter() - start
    return result
