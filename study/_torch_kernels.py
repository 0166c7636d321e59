"""The private torch kernels the training loop uses, each with torch's public API as fallback.

Kept because they buy more than 5% of the default study's time on CPU (docs/speed.md, "Private
torch kernels", has the measurement and its command). Each is checked against
the public path it replaces (tests/test_train.py): the same numbers, bit for bit or to float
rounding. ``STUDY_PUBLIC_TORCH=1`` (or :data:`PRIVATE_KERNELS` set False) runs the public path
everywhere: ``torch.optim`` with ``fused=True``, autograd, and the stack's unfused Adam.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from study.model import Model

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "PRIVATE_KERNELS",
    "FusedOptimizer",
    "MLPStep",
    "fused_adam",
    "fused_adam_updates",
]

# Whether the private kernels (FusedOptimizer, MLPStep, the stack's fused Adam) are used;
# STUDY_PUBLIC_TORCH=1 takes torch's public API instead (torch.optim, autograd).
PRIVATE_KERNELS = os.environ.get("STUDY_PUBLIC_TORCH") != "1"

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


class FusedOptimizer:
    """Adam, AdamW or SGD with momentum, stepped by the fused kernels ``torch.optim`` uses with
    ``fused=True``: the same update, bit for bit (a test checks it), without ``torch.optim``'s
    per-step wrappers.

    Those wrappers cost 70 us a step (93 us against 23 us at width 32, one thread), and building
    a ``torch.optim`` optimizer imports ``torch._dynamo``: 1.1 s in every trial process.
    ``param_groups`` are dicts with ``params``, ``lr`` and ``weight_decay``; a schedule sets
    ``lr`` in place.
    """

    def __init__(self, groups: list[dict], name: str, momentum: float = 0.0) -> None:
        self.param_groups = groups
        self.name = name
        self.momentum = momentum
        self._state: list[tuple[list[torch.Tensor], ...]] = []
        for g in groups:
            ps = g["params"]
            if name == "sgd":
                self._state.append(([],))  # momentum buffers, made at the first step
            else:
                self._state.append(
                    (
                        [torch.zeros_like(p, memory_format=torch.preserve_format) for p in ps],
                        [torch.zeros_like(p, memory_format=torch.preserve_format) for p in ps],
                        # torch.optim's fused step count: a float32 scalar on the device
                        [torch.zeros((), dtype=torch.float32, device=p.device) for p in ps],
                    )
                )

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for g, state in zip(self.param_groups, self._state, strict=True):
            params = g["params"]
            grads = [p.grad for p in params]
            if self.name == "sgd":
                (bufs,) = state
                first = self.momentum != 0 and not bufs
                if first:
                    bufs.extend(torch.empty_like(gr) for gr in grads)
                torch._fused_sgd_(
                    params,
                    grads,
                    bufs,
                    weight_decay=g["weight_decay"],
                    momentum=self.momentum,
                    lr=g["lr"],
                    dampening=0.0,
                    nesterov=False,
                    maximize=False,
                    is_first_step=first,
                    grad_scale=None,
                    found_inf=None,
                )
                continue
            exp_avgs, exp_avg_sqs, steps = state
            fused_adam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                lr=g["lr"],
                weight_decay=g["weight_decay"],
                decoupled=self.name == "adamw",
            )


def fused_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: float,
    weight_decay: float = 0.0,
    decoupled: bool = False,
) -> None:
    """One Adam (``decoupled``: AdamW) step in place, as ``torch.optim`` does with ``fused=True``:
    the step counts are float32 scalars on the device, incremented here."""
    torch._foreach_add_(steps, 1)
    kernel = torch._fused_adamw_ if decoupled else torch._fused_adam_
    kernel(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        amsgrad=False,
        lr=lr,
        beta1=ADAM_BETAS[0],
        beta2=ADAM_BETAS[1],
        weight_decay=weight_decay,
        eps=ADAM_EPS,
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


class MLPStep:
    """An MLP's loss and gradients computed by hand: the ops autograd runs for
    ``cross_entropy(model(x), y).backward()``, called directly, with each gradient written into
    a buffer that lives as long as the model (``p.grad``), so the result is autograd's bit for
    bit (a test checks it, SP and muP).

    Autograd's bookkeeping and a fresh gradient tensor per parameter per step cost 9% of an
    epoch's training at width 1024 and 10% at 512 on one CPU thread (:func:`study.train.train`,
    5 epochs, median of 5 alternating runs: 99.1 -> 89.9 ms, 31.2 -> 28.0 ms; 13.7 -> 10.8 ms at
    256).
    ``zero_grad`` is not needed: every step overwrites every gradient. ReLU and its backward
    run in place (bit for bit the same; at width 512 an epoch 2% faster, 33.1 -> 32.3 ms,
    medians of 8 alternating runs; no change measured at 1024).
    """

    def __init__(self, model: Model) -> None:
        self.linears = [m for m in model.hidden if isinstance(m, nn.Linear)]
        if not self.supports(model):
            raise ValueError("MLPStep needs an MLP: (Linear, ReLU) blocks, then the output")
        self.out = model.out
        self.mult = model.width_mult if model.mup else None
        for p in model.parameters():
            p.grad = torch.zeros_like(p)

    @staticmethod
    def supports(model: Model) -> bool:
        """An MLP with biases: (Linear, ReLU) blocks, then the output layer."""
        blocks = list(model.hidden)
        pairs = list(zip(blocks[::2], blocks[1::2], strict=False))
        return (
            bool(blocks)
            and len(blocks) == 2 * len(pairs)
            and all(isinstance(a, nn.Linear) and isinstance(b, nn.ReLU) for a, b in pairs)
            and all(a.bias is not None for a, _ in pairs)
            and model.out.bias is not None
        )

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The minibatch's mean cross-entropy; the gradients are in the parameters' ``grad``."""
        acts = [x]
        for lin in self.linears:
            acts.append(torch.relu_(torch.addmm(lin.bias, acts[-1], lin.weight.t())))
        z = acts[-1] if self.mult is None else acts[-1] / self.mult
        logits = torch.addmm(self.out.bias, z, self.out.weight.t())
        logp = torch._log_softmax(logits, 1, False)
        loss, total = torch.ops.aten.nll_loss_forward(logp, y, None, 1, -100)
        g = torch.ops.aten.nll_loss_backward(torch.ones_like(loss), logp, y, None, 1, -100, total)
        g = torch._log_softmax_backward_data(g, logp, 1, logits.dtype)
        torch.mm(g.t(), z, out=self.out.weight.grad)
        torch.sum(g, 0, keepdim=True, out=self.out.bias.grad.view(1, -1))
        g = g.mm(self.out.weight)
        if self.mult is not None:
            g = g / self.mult
        for i in range(len(self.linears) - 1, -1, -1):
            lin = self.linears[i]
            g = torch.ops.aten.threshold_backward.grad_input(g, acts[i + 1], 0, grad_input=g)
            torch.mm(g.t(), acts[i], out=lin.weight.grad)
            torch.sum(g, 0, keepdim=True, out=lin.bias.grad.view(1, -1))
            if i:
                g = g.mm(lin.weight)
        return loss


def fused_adam_updates(
    updates: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
) -> None:
    """Adam's update of each tensor at lr 1 into ``updates`` (zeroed first): each then holds
    minus its step, for the caller to scale by its own lr (a stack's members)."""
    torch._foreach_zero_(updates)
    fused_adam(updates, grads, exp_avgs, exp_avg_sqs, steps, lr=1.0)
