"""Several trials of one width trained at once, for any model: the transformer, a user's model.

The MLP has its own stack (study.stacked: hand-batched matmuls). Every other model is stacked
with PyTorch's public functional API: the K members' parameters become tensors with a leading
dimension K (``torch.func.stack_module_state``), one forward and backward runs over all of them
(``torch.func.vmap`` over ``torch.func.grad`` of ``torch.func.functional_call``), and the
optimizer step is elementwise over the stack, each member with its own lr, minibatch order and
Adam/AdamW/SGD state. Each member's result is that of its own run, ``study.train.train`` with
the same seed and lr, within float tolerance (tests/test_stacked_func.py).

A model stacks when it has no buffers that training changes (BatchNorm's running statistics),
no dropout module (a functional dropout inside ``forward`` is not seen: vmap then refuses the
random draw, and the trial fails with that error), and its optimizer is one of the space's own
(not a ``mup`` package optimizer): see :func:`can_stack_any`. Whether stacking wins depends on
the model and the machine, so it is used only up to ``--stack-max-width``, 0 by default for
these models (study.builders; measure with scripts/stack_probe.py).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from study.data import Dataset
from study.model import _lr_mult, count_parameters
from study.space import Space
from study.stacked import end_epoch, generators, new_results, share_times
from study.train import (
    EpochResult,
    TrainResult,
    loss_function,
    make_model,
    under_matmul_precision,
    warmup_cosine,
)

__all__ = ["can_stack_any", "train_stacked_any"]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8


def can_stack_any(space: Space, model: nn.Module) -> bool:
    """Whether :func:`train_stacked_any` trains this space's ``model`` (one built at some width)
    exactly as one trial at a time would."""
    if space.training.schedule == "plateau":  # its lr follows each member's own losses
        return False
    if space.model.parametrization == "mup" and space.model.factory is not None:
        return False  # a mup-package model trains with mup's optimizers
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase | nn.modules.dropout._DropoutNd):
            if getattr(m, "p", 0) > 0 or isinstance(m, nn.modules.batchnorm._NormBase):
                return False
        if isinstance(m, nn.MultiheadAttention) and m.dropout > 0:
            return False
    return True


def _lr_factors(space: Space, model: nn.Module) -> dict[str, tuple[float, float]]:
    """Per parameter name: (lr factor, weight decay), as the space's optimizer gives them."""
    opt = space.optimizer
    roles = getattr(model, "roles", None)
    out = {}
    by_id = {id(p): r for r, p in roles} if roles is not None else {}
    mup = space.model.parametrization == "mup" and roles is not None
    width_mult = getattr(model, "width_mult", 1.0)
    for name, p in model.named_parameters():
        k = _lr_mult(by_id[id(p)], opt.name, width_mult) if mup and id(p) in by_id else 1.0
        out[name] = (k, opt.weight_decay / k if mup else opt.weight_decay)
    return out


class _FuncStack:
    """The members' stacked parameters, their optimizer state, and one step over all of them."""

    def __init__(self, models: Sequence[nn.Module], space: Space, lrs: Sequence[float]) -> None:
        self.space = space
        params, buffers = stack_module_state(list(models))  # type: ignore[arg-type]
        trainable = {n for n, p in models[0].named_parameters() if p.requires_grad}
        self.params = {n: p.detach() for n, p in params.items() if n in trainable}
        self.frozen = {n: p.detach() for n, p in params.items() if n not in trainable}
        self.buffers = buffers
        self.base = copy.deepcopy(models[0]).to("meta")
        factors = _lr_factors(space, models[0])
        lr = torch.tensor(lrs, dtype=torch.float32, device=next(iter(params.values())).device)
        self.lr = {
            n: (lr * factors[n][0]).view(-1, *[1] * (p.dim() - 1)) for n, p in self.params.items()
        }
        self.base_lr = dict(self.lr)
        self.wd = {n: factors[n][1] for n in self.params}
        self.m = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.step_count = 0
        loss_fn = loss_function(space)

        def loss(params: dict, frozen: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor):  # type: ignore[no-untyped-def,type-arg]
            out = functional_call(self.base, ({**params, **frozen}, buffers), (x,))
            value = loss_fn(out, y)
            return value, value

        self._grad = vmap(grad(loss, has_aux=True))

        def forward(params: dict, frozen: dict, buffers: dict, x: torch.Tensor):  # type: ignore[no-untyped-def,type-arg]
            return functional_call(self.base, ({**params, **frozen}, buffers), (x,))

        self._forward = vmap(forward, in_dims=(0, 0, 0, None))
        self._loss_fn = loss_fn

    def grads(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each member's gradients and loss on its own batch (x: [K, B, ...], y: [K, B, ...])."""
        return self._grad(self.params, self.frozen, self.buffers, x, y)

    def step(self, g: dict[str, torch.Tensor]) -> None:
        """One optimizer step per member, as torch.optim's Adam, AdamW or SGD computes it."""
        opt = self.space.optimizer
        self.step_count += 1
        t = self.step_count
        with torch.no_grad():
            for n, p in self.params.items():
                grad_n, lr, wd = g[n], self.lr[n], self.wd[n]
                if opt.name == "sgd":
                    if wd:
                        grad_n = grad_n + wd * p
                    if opt.momentum:
                        buf = self.m[n]
                        if t == 1:
                            buf.copy_(grad_n)
                        else:
                            buf.mul_(opt.momentum).add_(grad_n)
                        grad_n = buf
                    p.sub_(lr * grad_n)
                    continue
                if opt.name == "adamw":
                    p.mul_(1 - lr * wd)
                elif wd:
                    grad_n = grad_n + wd * p
                b1, b2 = _ADAM_BETAS
                self.m[n].lerp_(grad_n, 1 - b1)
                self.v[n].mul_(b2).addcmul_(grad_n, grad_n, value=1 - b2)
                bc1, bc2 = 1 - b1**t, 1 - b2**t
                denom = (self.v[n].sqrt() / math.sqrt(bc2)).add_(_ADAM_EPS)
                p.sub_(lr / bc1 * self.m[n] / denom)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's validation loss and accuracy (NaN where the targets are not labels)."""
        with torch.no_grad():
            out = self._forward(self.params, self.frozen, self.buffers, x)
            loss = torch.stack([self._loss_fn(o, y) for o in out])
            if y.dtype == torch.int64:
                acc = (out.argmax(dim=-1) == y).float().flatten(1).mean(1)
            else:
                acc = torch.full_like(loss, math.nan)
        return loss, acc

    def keep(self, rows: torch.Tensor) -> None:
        """Only these members go on."""
        for d in (self.params, self.frozen, self.buffers, self.m, self.v, self.lr, self.base_lr):
            for n in d:
                d[n] = d[n][rows]

    def set_lr_factor(self, factor: float) -> None:
        for n in self.lr:
            self.lr[n] = self.base_lr[n] * factor


@under_matmul_precision
def train_stacked_any(
    space: Space,
    data: Dataset,
    width: int,
    lrs: Sequence[float],
    seeds: Sequence[int],
    on_epoch: Callable[[list[int], list[EpochResult]], list[bool]] | None = None,
) -> list[TrainResult]:
    """Train ``len(lrs)`` models of one width at once; member i is the run ``train(..., lrs[i],
    seeds[i])`` would do. ``on_epoch`` as for :func:`study.stacked.train_stacked`."""
    start = time.perf_counter()
    device = data.x_train.device
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(make_model(space, width, data).to(device))
    if not can_stack_any(space, models[0]):
        raise ValueError("this model trains one trial at a time (see study.stacked_func)")
    stack = _FuncStack(models, space, lrs)
    gens = generators(seeds, device)
    cfg = space.training
    results = new_results(
        stack.evaluate(data.x_val, data.y_val)[0].tolist(), count_parameters(models[0])
    )
    del models
    setup = time.perf_counter() - start
    evaluation = callback = 0.0
    live = list(range(len(lrs)))
    n = data.x_train.shape[0]
    step, total_steps = 0, cfg.epochs * math.ceil(n / cfg.batch_size)
    for epoch in range(1, cfg.epochs + 1):
        if not live:
            break
        factor = 1.0
        if cfg.schedule == "cosine":  # as study.train.train: stepped per epoch
            factor = (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs)) / 2
            stack.set_lr_factor(factor)
        orders = torch.stack([torch.randperm(n, generator=gens[i], device=device) for i in live])
        loss_sum = torch.zeros(len(live), device=device)
        n_batches = 0
        for i in range(0, n, cfg.batch_size):
            idx = orders[:, i : i + cfg.batch_size]
            if cfg.schedule == "warmup_cosine":
                stack.set_lr_factor(warmup_cosine(step, total_steps, cfg.warmup))
                step += 1
            g, loss = stack.grads(data.x_train[idx], data.y_train[idx])
            stack.step(g)
            loss_sum += loss.detach()
            n_batches += 1
        t_eval = time.perf_counter()
        val_loss_t, val_acc_t = stack.evaluate(data.x_val, data.y_val)
        rows = torch.stack([loss_sum / n_batches, val_loss_t, val_acc_t]).tolist()
        if cfg.schedule == "warmup_cosine":  # the epoch's last step's
            factor = warmup_cosine(step - 1, total_steps, cfg.warmup)
        t_callback = time.perf_counter()
        evaluation += t_callback - t_eval
        going = end_epoch(results, live, rows, epoch, lrs, factor, space, on_epoch)
        callback += time.perf_counter() - t_callback
        if len(going) < len(live):
            stack.keep(torch.tensor(going, dtype=torch.long, device=device))
            live = [live[j] for j in going]
    share_times(results, start, setup, evaluation, callback)
    return results
