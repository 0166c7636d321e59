"""Several trials of the same width trained at once, as one stacked model.

K MLPs of one width become weights of shape ``[K, fan_in, fan_out]``; every step is a batched
matmul over the K members, each with its own minibatch order, learning rate and optimizer state.
The members stay independent: the result of each is that of its own run (same seed, same lr)
within float tolerance. A member that is pruned or diverges leaves the stack; the others go on.

Where it wins (measured on one CPU thread): small widths, where one run cannot fill the matmul
units; at width 512 and beyond a single run already does, and stacking is slower. On a GPU it is
the main lever. Supported: the MLP family, SP and muP, Adam/AdamW/SGD, schedule none or cosine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from study import _torch_kernels
from study._torch_kernels import ADAM_BETAS, ADAM_EPS, fused_adam_updates
from study.data import Dataset
from study.model import Model, _lr_mult, build_model, count_parameters
from study.space import Space
from study.train import (
    FUSED_DEVICES,
    EpochResult,
    TrainResult,
    _evaluate,
    out_of_patience,
    under_matmul_precision,
)

__all__ = ["can_stack", "train_stacked"]


def can_stack(space: Space) -> bool:
    """Whether :func:`train_stacked` supports this space (else train one trial at a time)."""
    return (
        space.model.family == "mlp"
        and space.model.factory is None  # a user's model trains one trial at a time
        and space.training.loss == "cross_entropy"
        and space.training.schedule in ("none", "cosine")
    )


def generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One minibatch-order generator per member, seeded as its own run seeds it."""
    gens = []
    for seed in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        gens.append(g)
    return gens


def new_results(initial: Sequence[float], n_params: int) -> list[TrainResult]:
    """Each member's result before its first epoch (``initial``: its validation loss then)."""
    return [
        TrainResult(math.inf, 0, 0.0, math.nan, math.nan, v, 0, False, False, n_params, 0.0)
        for v in initial
    ]


def end_epoch(
    results: list[TrainResult],
    live: list[int],
    rows: list[list[float]],
    epoch: int,
    lrs: Sequence[float],
    factor: float,
    space: Space,
    on_epoch: Callable[[list[int], list[EpochResult]], list[bool]] | None,
) -> list[int]:
    """Record an epoch of the members still training (``live``, their indices; ``rows``: train
    loss, validation loss and accuracy per live member), ask ``on_epoch`` about them, and return
    the positions in ``live`` of those that go on (not diverged, pruned or out of patience)."""
    cfg = space.training
    eps = []
    for row, member in enumerate(live):
        train_loss, v_loss, v_acc = rows[0][row], rows[1][row], rows[2][row]
        r = results[member]
        limit = cfg.divergence_factor * r.initial_val_loss
        diverged = (
            not (math.isfinite(train_loss) and math.isfinite(v_loss))
            or max(train_loss, v_loss) > limit
        )
        r.epochs_run, r.final_val_loss, r.final_train_loss = epoch, v_loss, train_loss
        r.curve.append(v_loss)
        if not diverged and v_loss < r.best_val_loss:
            r.best_val_loss, r.best_epoch, r.val_accuracy = v_loss, epoch, v_acc
        eps.append(
            EpochResult(
                epoch,
                train_loss,
                v_loss,
                v_acc,
                lrs[member] * factor,
                diverged,
                limit,
                r.initial_val_loss,
            )
        )
    stops = on_epoch(list(live), eps) if on_epoch is not None else [False] * len(live)
    if len(stops) != len(live):
        raise ValueError(f"on_epoch returned {len(stops)} flags for {len(live)} members")
    keep = []
    for row, (member, ep, stop) in enumerate(zip(live, eps, stops, strict=True)):
        if ep.diverged:
            results[member].diverged = True
        elif stop:
            results[member].stopped = True
        elif out_of_patience(epoch, results[member].best_epoch, cfg.patience, cfg.epochs):
            results[member].early_stopped = True
        else:
            keep.append(row)
    return keep


def share_times(
    results: list[TrainResult], start: float, setup: float, evaluation: float, callback: float
) -> None:
    """Each member's share of the stack's time."""
    k = len(results)
    seconds = (time.perf_counter() - start) / k
    for r in results:
        r.seconds, r.eval_seconds, r.callback_seconds, r.setup_seconds = (
            seconds,
            evaluation / k,
            callback / k,
            setup / k,
        )


class _Stack:
    """The K members' parameters (layer by layer) and their optimizer state."""

    def __init__(self, models: Sequence[Model], space: Space, lrs: Sequence[float]) -> None:
        self.mup = models[0].mup
        self.width_mult = models[0].width_mult
        opt = space.optimizer
        self.opt = opt
        linears = [
            [m for m in model.hidden if isinstance(m, nn.Linear)] + [model.out] for model in models
        ]
        roles = dict((id(p), r) for r, p in models[0].roles)
        lr = torch.tensor(lrs, dtype=torch.float32).view(-1, 1, 1)
        self.params: list[torch.Tensor] = []
        self.lr: list[torch.Tensor] = []
        self.wd: list[float] = []
        for i, layer0 in enumerate(linears[0]):
            w = torch.stack([ls[i].weight.detach().t() for ls in linears]).contiguous()
            b = torch.stack([ls[i].bias.detach().unsqueeze(0) for ls in linears]).contiguous()
            for p, p0 in ((w, layer0.weight), (b, layer0.bias)):
                k = _lr_mult(roles[id(p0)], opt.name, self.width_mult) if self.mup else 1.0
                self.params.append(p.requires_grad_(True))
                self.lr.append((lr * k).to(p.device))
                self.wd.append(opt.weight_decay / k)
        self.base_lr = [t.clone() for t in self.lr]
        self.state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in self.params]
        self.step_count = 0
        # Adam/AdamW: the fused kernel computes each member's update into a zeroed buffer at
        # lr 1 (one pass), and the per-member lr is applied in a second; the unfused update
        # took 7 passes with temporaries: 58% of a batch at width 256.
        self._fused = (
            _torch_kernels.PRIVATE_KERNELS
            and opt.name != "sgd"
            and self.params[0].device.type in FUSED_DEVICES
        )
        self._update = [torch.zeros_like(p) for p in self.params] if self._fused else []
        self._steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self._update]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: [K, batch, features] -> logits [K, batch, classes]."""
        n = len(self.params) // 2
        for i in range(n):
            w, b = self.params[2 * i], self.params[2 * i + 1]
            if i == n - 1 and self.mup:
                x = x / self.width_mult
            x = torch.baddbmm(b, x, w)
            if i < n - 1:
                x = torch.relu(x)
        return x

    @torch.no_grad()
    def step(self) -> None:
        """One step of the space's optimizer, per member (torch.optim's update rules)."""
        self.step_count += 1
        if self._fused:
            self._fused_adam_step()
            return
        t = self.step_count
        for p, lr, wd, (m, v) in zip(self.params, self.lr, self.wd, self.state, strict=True):
            g = p.grad
            if self.opt.name == "sgd":
                if wd:
                    g = g.add(p, alpha=wd)
                if self.opt.momentum:
                    if t == 1:
                        m.copy_(g)
                    else:
                        m.mul_(self.opt.momentum).add_(g)
                    g = m
                p.sub_(lr * g)
                continue
            if self.opt.name == "adamw":
                p.mul_(1 - lr * wd)
            elif wd:
                g = g.add(p, alpha=wd)
            m.lerp_(g, 1 - ADAM_BETAS[0])
            v.mul_(ADAM_BETAS[1]).addcmul_(g, g, value=1 - ADAM_BETAS[1])
            denom = (v.sqrt() / math.sqrt(1 - ADAM_BETAS[1] ** t)).add_(ADAM_EPS)
            p.sub_(m / denom * (lr / (1 - ADAM_BETAS[0] ** t)))

    def _fused_adam_step(self) -> None:
        grads = []
        for p, lr, wd in zip(self.params, self.lr, self.wd, strict=True):
            g = p.grad
            if self.opt.name == "adamw":
                p.mul_(1 - lr * wd)
            elif wd:
                g = g.add(p, alpha=wd)
            grads.append(g)
        fused_adam_updates(  # at lr 1 into the buffers: each holds minus its update
            self._update, grads, [m for m, _ in self.state], [v for _, v in self.state], self._steps
        )
        for p, u, lr in zip(self.params, self._update, self.lr, strict=True):
            p.addcmul_(u, lr)  # the member's own lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the members at ``rows`` (a pruned or diverged member leaves the stack)."""
        self.params = [p.detach()[rows].requires_grad_(True) for p in self.params]
        self.lr = [x[rows] for x in self.lr]
        self.base_lr = [x[rows] for x in self.base_lr]
        self.state = [(m[rows], v[rows]) for m, v in self.state]
        self._update = [u[rows] for u in self._update]

    def set_lr_factor(self, factor: float) -> None:
        self.lr = [b * factor for b in self.base_lr]


@under_matmul_precision
def train_stacked(
    space: Space,
    data: Dataset,
    width: int,
    lrs: Sequence[float],
    seeds: Sequence[int],
    on_epoch: Callable[[list[int], list[EpochResult]], list[bool]] | None = None,
) -> list[TrainResult]:
    """Train ``len(lrs)`` models of one width at once; member i is the run ``train(..., lrs[i],
    seeds[i])`` would do.

    Args:
        on_epoch: called once per epoch with the members still training (their indices) and
            each one's result, in that order; returns one flag per member, True to stop it
            (pruned). The epoch a member diverged is passed too; that member stops anyway.
            One call per epoch lets the caller report all members in one storage write.

    Returns:
        One :class:`~study.train.TrainResult` per member, in the order of ``lrs``.
    """
    if not can_stack(space):
        raise ValueError("train_stacked supports the mlp family with schedule none or cosine.")
    start = time.perf_counter()
    device = data.x_train.device
    k = len(lrs)
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(space.model, width, data.n_features, data.n_classes).to(device))
    stack = _Stack(models, space, lrs)
    gens = generators(seeds, device)
    initial = [float(_evaluate(m, data.x_val, data.y_val)[0]) for m in models]
    results = new_results(initial, count_parameters(models[0]))
    live = list(range(k))  # member index of each row of the stack
    cfg = space.training
    n = data.x_train.shape[0]
    x_val = data.x_val.unsqueeze(0)
    factor = 1.0
    eval_seconds = callback_seconds = 0.0
    setup_seconds = time.perf_counter() - start
    for epoch in range(1, cfg.epochs + 1):
        if cfg.schedule == "cosine":  # CosineAnnealingLR(T_max=epochs), stepped per epoch
            factor = (1 + math.cos(math.pi * (epoch - 1) / cfg.epochs)) / 2
            stack.set_lr_factor(factor)
        orders = torch.stack([torch.randperm(n, generator=gens[i], device=device) for i in live])
        loss_sum = torch.zeros(len(live), device=device)
        n_batches = 0
        for i in range(0, n, cfg.batch_size):
            idx = orders[:, i : i + cfg.batch_size]
            logits = stack.forward(data.x_train[idx])
            losses = nn.functional.cross_entropy(
                logits.transpose(1, 2), data.y_train[idx], reduction="none"
            ).mean(dim=1)
            stack.zero_grad()
            losses.sum().backward()
            stack.step()
            loss_sum += losses.detach()
            n_batches += 1
        t_eval = time.perf_counter()
        with torch.no_grad():
            logits = stack.forward(x_val.expand(len(live), -1, -1))
            val_loss = nn.functional.cross_entropy(
                logits.transpose(1, 2), data.y_val.expand(len(live), -1), reduction="none"
            ).mean(dim=1)
            val_acc = (logits.argmax(dim=2) == data.y_val).float().mean(dim=1)
        rows = torch.stack([loss_sum / n_batches, val_loss, val_acc]).tolist()  # one sync
        t_callback = time.perf_counter()
        eval_seconds += t_callback - t_eval
        keep = end_epoch(results, live, rows, epoch, lrs, factor, space, on_epoch)
        callback_seconds += time.perf_counter() - t_callback
        if len(keep) < len(live):
            if not keep:
                break
            stack.keep(torch.tensor(keep, device=device))
            live = [live[row] for row in keep]
    share_times(results, start, setup_seconds, eval_seconds, callback_seconds)
    return results
