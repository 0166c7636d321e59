"""One training run: a model at one width, trained at one learning rate, evaluated every epoch.

Knows nothing of Optuna: the caller gets each epoch's result through ``on_epoch`` and returns
``True`` to stop (a pruned trial). The data stays on the device; the only host syncs are one per
epoch (train loss, validation loss and accuracy read together).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

import torch
from torch import nn

from study import _torch_kernels
from study._torch_kernels import FusedOptimizer, MLPStep
from study.data import Dataset
from study.model import Model, build_model, count_parameters, param_groups
from study.space import Space

__all__ = [
    "EpochResult",
    "TrainResult",
    "make_optimizer",
    "matmul_arithmetic",
    "matmul_precision",
    "out_of_patience",
    "to_fast_layout",
    "train",
    "under_matmul_precision",
]

P = ParamSpec("P")
R = TypeVar("R")

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
    # The loss above which a run has diverged (divergence_factor x the initial loss).
    limit: float = math.inf
    initial: float = math.inf  # the validation loss before any step

    @property
    def shown_loss(self) -> float:
        """The validation loss as a study stores it: a diverged epoch's at most the initial
        loss (no better than not training). Its loss (800-1,800, NaN or inf; even capped at the
        divergence limit, 10x the initial loss) would flatten every other curve in the
        dashboard's plots; its true value stays in the trial's attrs (``final_val_loss``)."""
        if not self.diverged:
            return self.val_loss
        cap = min(self.initial, self.limit)
        return cap if math.isnan(self.val_loss) else min(self.val_loss, cap)


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
    # Stopped by the space's training.patience: no better validation loss for that many epochs.
    early_stopped: bool = False
    # Parts of ``seconds`` (host clock; exact on CPU, where every op is synchronous): the
    # per-epoch evaluation, the caller's ``on_epoch`` (storage writes, the pruner), and the
    # setup before the first epoch (the model, its optimizer, the evaluation before training).
    eval_seconds: float = 0.0
    callback_seconds: float = 0.0
    setup_seconds: float = 0.0


def make_model(space: Space, width: int, data: Dataset) -> nn.Module:
    """The space's model at ``width``: the user's (``model.factory``) or a built-in family."""
    if space.model.factory is not None:
        from study.user_parts import build_user_model

        return build_user_model(space.model, width)
    return build_model(space.model, width, data.n_features, data.n_classes, data.image_shape)


def make_optimizer(space: Space, model: Model, lr: float) -> torch.optim.Optimizer | FusedOptimizer:
    """The space's optimizer, with per-layer groups under muP (see :mod:`study.model`).

    On CPU and CUDA it is a :class:`FusedOptimizer` (fused kernels: 1.6x faster an epoch at
    width 1024 on one CPU thread than torch.optim's default foreach path); elsewhere, and with
    the plateau schedule (torch's ReduceLROnPlateau takes only a torch.optim optimizer),
    ``torch.optim``'s own, fused where it can be.
    """
    opt = space.optimizer
    if not hasattr(model, "roles"):  # a user's model (model.factory); ours list their roles
        from study.user_parts import is_mup_model

        params = [p for p in model.parameters() if p.requires_grad]
        if space.model.parametrization == "mup" and is_mup_model(model):  # mup's optimizers
            import mup

            if opt.name == "sgd":
                return mup.MuSGD(
                    params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay
                )
            make = mup.MuAdamW if opt.name == "adamw" else mup.MuAdam
            return make(params, lr=lr, weight_decay=opt.weight_decay)
        # torch.optim: it skips a parameter that got no gradient (an unused head)
        if opt.name == "sgd":
            return torch.optim.SGD(
                params, lr=lr, momentum=opt.momentum, weight_decay=opt.weight_decay
            )
        make_opt = torch.optim.AdamW if opt.name == "adamw" else torch.optim.Adam
        return make_opt(params, lr=lr, weight_decay=opt.weight_decay)
    else:
        groups = param_groups(model, opt.name, lr, opt.weight_decay)
    device = next(model.parameters()).device
    fused = device.type in FUSED_DEVICES
    if fused and space.training.schedule != "plateau" and _torch_kernels.PRIVATE_KERNELS:
        return FusedOptimizer(groups, opt.name, opt.momentum)
    kw = {"fused": True} if fused else {}
    if opt.name == "adam":
        return torch.optim.Adam(groups, lr=lr, **kw)
    if opt.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **kw)
    return torch.optim.SGD(groups, lr=lr, momentum=opt.momentum, **kw)


def to_fast_layout(model: nn.Module, device: torch.device) -> None:
    """On CPU, a CNN's conv weights go channels-last (NHWC), in place: oneDNN's convolutions on
    digits' 8x8 images are then faster, an epoch 1.37, 1.21, 1.36 and 1.14x at widths 8, 16, 32
    and 64 (one thread, AMD EPYC, fastest of 3 runs of 3 epochs each way; in a two-process study
    1.10-1.38x at 8-32, 1.00-1.15x at 64). The curves differ by float rounding only (at most
    1.2e-7 in 3 epochs). A model without 4-D weights (an MLP) is left as it is."""
    if device.type == "cpu" and any(p.dim() == 4 for p in model.parameters()):
        model.to(memory_format=torch.channels_last)


def loss_function(space: Space) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The space's ``training.loss``: cross-entropy on logits, or the mean squared error."""
    if space.training.loss == "mse":
        return nn.functional.mse_loss
    return cross_entropy


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [N, C] against labels [N], or of a language model's logits
    [B, T, C] against the next tokens [B, T] (the mean over every position)."""
    if out.dim() == 3:
        return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten())
    return nn.functional.cross_entropy(out, y)


def _evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> tuple[torch.Tensor, ...]:
    """Validation loss and accuracy (NaN for targets that are not class labels)."""
    with torch.no_grad():
        out = model(x)
        loss = loss_fn(out, y)
        if y.dtype == torch.int64:
            acc = (out.argmax(dim=-1) == y).float().mean()
        else:
            acc = torch.full((), math.nan, device=out.device)
    return loss, acc


def warmup_cosine(step: int, total: int, warmup: float) -> float:
    """The lr factor at ``step`` (0-based) of ``total``: linear from 1/w up to 1 over the first
    w = ``warmup`` x total steps, then a cosine to zero at the end."""
    w = max(1, round(warmup * total))
    if step < w:
        return (step + 1) / w
    return (1 + math.cos(math.pi * (step - w) / max(1, total - w))) / 2


def out_of_patience(epoch: int, best_epoch: int, patience: int, epochs: int) -> bool:
    """Early stopping: ``patience`` (> 0) epochs have passed without a better validation loss,
    before the run's last epoch (a run that ends there anyway has not stopped early)."""
    return patience > 0 and epoch < epochs and epoch - best_epoch >= patience


# A float32 value whose rounding tells the arithmetic apart: bf16 (8 significant bits) keeps 1,
# tf32 (11) keeps 1 + 2**-9, fp32 (24) keeps it all.
_PROBE = 1 + 2**-9 + 2**-12


@functools.cache
def matmul_arithmetic(precision: str, device: torch.device) -> str:
    """What a float32 matmul computes in under ``precision`` on ``device``: "fp32", "bf16"
    (inputs rounded to bfloat16, fp32 sums), "tf32" (inputs rounded to TensorFloat-32), or
    "reduced" (inputs rounded some other way).

    Measured, not looked up: one probe matmul (of the shape of a small training step) run under
    ``precision``, its inputs chosen so that each arithmetic rounds them differently. torch maps
    "medium" to bf16 on a CPU where oneDNN reports bf16 support, yet oneDNN may still choose an
    fp32 kernel (an AMD Zen 4 does, with AVX-512 BF16 but no AMX); CUDA runs TF32 from compute
    capability 8.
    """
    if precision == "highest":
        return "fp32"
    a = torch.full((64, 256), _PROBE, device=device)
    b = torch.zeros(256, 128, device=device)
    b[0] = 1.0  # every output is exactly a[i, 0] rounded as the matmul rounds its inputs
    with matmul_precision(precision):
        got = (a @ b)[0, 0].item()
    return _arithmetic_of(got)


def _arithmetic_of(probe: float) -> str:
    """The arithmetic that rounds ``_PROBE`` to ``probe``."""
    names = {_PROBE: "fp32", 1 + 2**-9: "tf32", 1.0: "bf16"}
    return names.get(probe, "reduced")


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """Run the block under torch's float32 matmul ``precision`` (a space's
    ``training.matmul_precision``; a process-wide setting), and put the previous one back."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def under_matmul_precision(
    run: Callable[Concatenate[Space, P], R],
) -> Callable[Concatenate[Space, P], R]:
    """A training function (its first argument the space) run under :func:`matmul_precision`."""

    @functools.wraps(run)
    def wrapped(space: Space, *args: P.args, **kwargs: P.kwargs) -> R:
        with matmul_precision(space.training.matmul_precision):
            return run(space, *args, **kwargs)

    return wrapped


@under_matmul_precision
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
    model = make_model(space, width, data).to(device)
    to_fast_layout(model, device)
    optimizer = make_optimizer(space, model, lr)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    # On CPU an MLP's step is computed by hand (autograd's ops and result, less its overhead).
    loss_fn = loss_function(space)
    mlp_step = (
        MLPStep(model)
        if _torch_kernels.PRIVATE_KERNELS
        and device.type == "cpu"
        and isinstance(model, Model)
        and space.training.loss == "cross_entropy"
        and MLPStep.supports(model)
        else None
    )
    cfg = space.training
    plateau = None
    if cfg.schedule == "plateau":
        assert isinstance(optimizer, torch.optim.Optimizer)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
        )
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    initial_val_loss = float(_evaluate(model, data.x_val, data.y_val, loss_fn)[0])
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
    result.setup_seconds = time.perf_counter() - start
    step, total_steps = 0, cfg.epochs * math.ceil(n / cfg.batch_size)
    for epoch in range(1, cfg.epochs + 1):
        if cfg.schedule == "cosine":  # CosineAnnealingLR(T_max=epochs) stepped per epoch,
            factor = (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs)) / 2  # closed form
            for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                g["lr"] = base * factor
        model.train()
        order = torch.randperm(n, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        n_batches = 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if cfg.schedule == "warmup_cosine":
                for g, base in zip(optimizer.param_groups, base_lrs, strict=True):
                    g["lr"] = base * warmup_cosine(step, total_steps, cfg.warmup)
                step += 1
            if mlp_step is not None:
                loss = mlp_step(data.x_train[idx], data.y_train[idx])
            else:
                loss = loss_fn(model(data.x_train[idx]), data.y_train[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            n_batches += 1
        model.eval()
        t_eval = time.perf_counter()
        val_loss_t, val_acc_t = _evaluate(model, data.x_val, data.y_val, loss_fn)
        epoch_lr = lr * optimizer.param_groups[0]["lr"] / base_lrs[0]  # after the schedule
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
        ep = EpochResult(
            epoch, train_loss, val_loss, val_acc, epoch_lr, diverged, limit, initial_val_loss
        )
        stop = on_epoch(ep) if on_epoch is not None else False
        result.callback_seconds += time.perf_counter() - t_callback
        if diverged:
            result.diverged = True
            break
        if stop:
            result.stopped = True
            break
        if out_of_patience(epoch, result.best_epoch, cfg.patience, cfg.epochs):
            result.early_stopped = True
            break
        if plateau is not None:
            plateau.step(val_loss)
    result.seconds = time.perf_counter() - start
    return result
