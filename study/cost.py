"""What a space costs: the memory of its widest trial and of its dataset, estimated from its
shapes before anything trains or is stored, and checked against the device a run trains on.

A space that cannot fit (a width of 10**7, a dataset of 10**9 samples) is refused in one line
before the study is created, not after its narrower widths trained.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study._errors import SpaceError, UserError
from study.space_config import ModelConfig, Space, _FieldError

__all__ = ["Cost", "check_memory", "estimate_cost", "host_memory_available"]

_FLOAT32, _FLOAT64, _INT64 = 4, 8, 8
# The digits' images (the CNN's input).
_IMAGE_PIXELS = 8 * 8


@dataclass(frozen=True)
class Cost:
    """Memory one trial of a width needs, estimated from the space's shapes (bytes)."""

    width: int
    stack: int  # trials trained at once as one stacked model
    params: int  # of one model
    # On the training device, for all the stack's members: weights, gradients and optimizer
    # state (float32), the activations of a batch and of the validation pass.
    model_bytes: int
    # The dataset on the training device: float32 inputs, int64 labels.
    data_bytes: int
    # On the host whatever the device: the dataset while it is built and split (float64).
    build_bytes: int

    def needed(self, device: str) -> int:
        """Bytes on ``device`` ("cpu" or "cuda") for the trial, the dataset included; for
        "host", what the host holds whatever the device: the dataset as built and one model's
        weights (every model is built on the host, then moved)."""
        if device == "host":
            return self.build_bytes + _FLOAT32 * self.params
        if device == "cpu":
            return self.build_bytes + self.data_bytes + self.model_bytes
        return self.data_bytes + self.model_bytes


def _n_params(model: ModelConfig, width: int, n_features: int, n_classes: int) -> int:
    sizes = model.hidden_sizes(width)
    if model.family == "mlp":
        fans = [n_features, *sizes]
        hidden = sum(a * b + b for a, b in zip(fans, sizes, strict=False))
        return hidden + sizes[-1] * n_classes + n_classes
    channels = [1, *sizes]  # 3x3 convs, then a 2x2 max-pool and a linear readout
    hidden = sum(9 * a * b + b for a, b in zip(channels, sizes, strict=False))
    return hidden + sizes[-1] * (_IMAGE_PIXELS // 4) * n_classes + n_classes


def _user_params(space: Space, width: int) -> int:
    """Parameters of the user's model at ``width``, built on torch's meta device (shapes only,
    no memory); where the factory cannot build there, on the CPU."""
    import torch

    from study.user_parts import build_user_model

    try:
        with torch.device("meta"):
            model = build_user_model(space.model, width)
    except UserError:
        model = build_user_model(space.model, width)
    return sum(p.numel() for p in model.parameters())


def estimate_cost(space: Space, width: int, stack: int = 1) -> Cost:
    """What a trial of ``width`` needs (:class:`Cost`), ``stack`` trials trained at once.

    An estimate from the shapes (a tensor's size, not the allocator's): weights, gradients and
    the optimizer's state (Adam: 2 floats a parameter, SGD: 1), two more floats a parameter in
    a stack (its members' own models, the fused update), the activations of one batch forward
    and backward, and those of the validation set's forward pass.
    """
    n, n_features, n_classes = space.dataset.shape
    n_val = min(max(space.dataset.n_val, 1), n - 1)
    batch = min(space.training.batch_size, n - n_val)
    opt = space.optimizer
    state = 2 if opt.name != "sgd" else (1 if opt.momentum else 0)
    per_param = 2 + state + (2 if stack > 1 else 0)
    sizes = space.model.hidden_sizes(width)
    if space.model.factory is not None:  # a user's model: its parameters counted, not made
        params = _user_params(space, width)
        # Its activations are unknown: a guess of a few layers of ``width`` units.
        train = 2 * (n_features + 4 * width + n_classes)
        val = 2 * width + n_classes
    elif space.model.family == "gpt":  # n_features: the context T; n_classes: the characters V
        depth, t, v = space.model.depth, n_features, n_classes
        params = depth * (12 * width * width + 13 * width) + (v + t) * width + width * v + v
        heads = width // space.model.head_size
        # per window: each block's activations and gradients (~16 floats a unit, the attention
        # matrix of every head), the logits
        train = 2 * t * (depth * (16 * width + heads * t) + v)
        val = t * (depth * (8 * width + heads * t) + v)
    elif space.model.family == "mlp":  # an activation and its gradient per unit
        params = _n_params(space.model, width, n_features, n_classes)
        train = 2 * (n_features + sum(sizes) + n_classes)
        val = 2 * max(sizes) + n_classes
    else:  # conv output, ReLU output and a gradient per channel and pixel
        params = _n_params(space.model, width, n_features, n_classes)
        train = _IMAGE_PIXELS * (1 + 3 * sum(sizes)) + sizes[-1] * _IMAGE_PIXELS // 4 + n_classes
        val = 2 * max(sizes) * _IMAGE_PIXELS + n_classes
    member = _FLOAT32 * (params * per_param + batch * train + n_val * val)
    teacher = 2 * space.dataset.teacher_width + n_classes if space.dataset.name != "digits" else 0
    return Cost(
        width=width,
        stack=stack,
        params=params,
        model_bytes=stack * member,
        data_bytes=n * (_FLOAT32 * n_features + _INT64),
        # the inputs, their split and standardized copies; the teacher's activations and logits
        build_bytes=_FLOAT64 * n * (3 * n_features + teacher),
    )


def host_memory_available() -> int | None:
    """Bytes the host can still give this process, or None where that cannot be read.

    Linux's MemAvailable (free memory and the caches it can drop), at most what this process's
    cgroup (a container's memory limit) has left; elsewhere the free pages.
    """
    available: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:  # cgroup v2: /proc/self/cgroup is "0::/path"; its limit, less what it uses
        own = Path("/proc/self/cgroup").read_text(encoding="ascii").split("::", 1)[1].strip()
        folder = Path("/sys/fs/cgroup") / Path(own).relative_to("/")
        limit = (folder / "memory.max").read_text().strip()
        if limit != "max":
            used = int((folder / "memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError, IndexError):
        pass
    return max(available, 0)


def _gib(n: int) -> str:
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 2**20:.2f} MiB"


def _check_fits(space: Space, device: str, available: int | None, where: str, stack: int) -> None:
    """Raise :class:`_FieldError` when the widest trial (or the dataset) needs more than
    ``available`` bytes on ``device`` ("host", "cpu" or "cuda"; see :meth:`Cost.needed`)."""
    if available is None:
        return
    width = max(space.model.widths)
    cost = estimate_cost(space, width, stack)
    needed = cost.needed(device)
    if needed <= available:
        return
    model = _FLOAT32 * cost.params if device == "host" else cost.model_bytes
    if needed - model > model:  # mostly the dataset
        n, n_features, _ = space.dataset.shape
        raise _FieldError(
            "dataset.n_samples",
            f"the dataset ({n:,} samples x {n_features:,} features) needs about {_gib(needed)} "
            f"of memory on {where} as it is built and trained on, which has {_gib(available)} "
            "available; use fewer samples or features",
        )
    what = (
        "to build its weights"
        if device == "host"
        else f"for its weights, gradients, {space.optimizer.name} state and activations"
        + (f" ({stack} trials stacked)" if stack > 1 else "")
    )
    raise _FieldError(
        "model.widths",
        f"width {width:,} ({cost.params:,} parameters) needs about {_gib(needed)} of memory "
        f"on {where} {what}, which has {_gib(available)} available; use narrower widths"
        + (" or fewer hidden layers" if space.model.depth > 1 else ""),
    )


def check_memory(
    space: Space,
    device: Any = "cpu",
    stack: int = 1,
    available: int | None = None,
    source: str | None = None,
) -> None:
    """Refuse a space whose widest trial cannot fit in ``device``'s memory now.

    On "cpu" the whole trial and the dataset as it is built must fit in the host's available
    memory; on a GPU the trial must fit in its free memory, and the host must still hold the
    dataset as it is built and one model's weights (every model is built there, then moved).

    Args:
        space: the validated space.
        device: "cpu", "cuda", "cuda:1" or a ``torch.device``.
        stack: trials of the widest width trained at once as one stacked model.
        available: bytes free on the device; default: read from the device.
        source: where the space comes from, the error's first words (a file, "the study's
            stored space"); default: the space's name.

    Raises:
        SpaceError: one line naming the width (or the dataset), the estimate and what is free.
    """
    kind = getattr(device, "type", str(device).split(":", 1)[0])
    try:
        if kind == "cuda":
            if available is None:
                import torch

                available = torch.cuda.mem_get_info(device)[0]
            _check_fits(space, "host", host_memory_available(), "this machine", 1)
            _check_fits(space, "cuda", available, str(device), stack)
        else:
            if available is None:
                available = host_memory_available()
            _check_fits(space, "cpu", available, "this machine", stack)
    except _FieldError as e:
        raise SpaceError(f"{source or 'space ' + space.name}: {e.key}: {e.message}") from None
