"""Models whose hidden width is the study's scientific parameter, in SP or in muP.

* mlp: ``n_features -> width x depth -> n_classes`` with ReLU (per-layer sizes via
  ``hidden_multipliers``).
* cnn (8x8 digits): 3x3 convs with ``width`` channels (``depth`` of them, ReLU), a 2x2 max-pool,
  then a linear readout from the ``width x 4 x 4`` features.

Under the standard parametrization (SP) every layer has PyTorch's default init and one global lr.
Under muP (Maximal Update Parametrization, Tensor Programs V, Table 8 form; the rules of the
``mup`` package), with ``m = width / base_width``:

| parameter                        | init                  | forward | Adam lr | SGD lr |
|----------------------------------|-----------------------|---------|---------|--------|
| input weights and biases         | default               | 1       | lr      | lr*m   |
| hidden weights (width -> width)  | default               | 1       | lr/m    | lr     |
| hidden biases                    | default * sqrt(m)     | 1       | lr      | lr*m   |
| output weights                   | default * sqrt(m)     | 1/m     | lr      | lr*m   |
| output bias (size = classes)     | default * sqrt(m)     | 1       | lr      | lr     |

Adam's coupled weight decay is multiplied by m on hidden weights; SGD's is divided by m where
its lr is multiplied. At ``width == base_width`` (m = 1) muP is SP exactly. Each model lists its
parameters with their role (:data:`ROLES`), from which :func:`param_groups` builds the groups.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from study.space import ModelConfig

__all__ = ["ROLES", "Model", "build_model", "count_parameters", "param_groups"]

# input: from the data into the width; hidden_weight: width -> width; hidden_bias: bias of a
# layer whose fan-in is the width; output: from the width to the classes; norm: a LayerNorm's
# gain and bias (the gpt family), trained as input parameters.
ROLES = ("input", "hidden_weight", "hidden_bias", "output_weight", "output_bias", "norm")


class Model(nn.Module):
    """Hidden blocks, then an output layer whose input is scaled by ``output_mult`` (1/m in muP)."""

    def __init__(self, hidden: nn.Sequential, out: nn.Linear, width_mult: float, mup: bool):
        super().__init__()
        self.hidden = hidden
        self.out = out
        self.width_mult = width_mult
        self.mup = mup
        self.roles: list[tuple[str, nn.Parameter]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        if self.mup:
            h = h / self.width_mult
        return self.out(h)


def _assign_roles(model: Model, layers: list[nn.Module]) -> None:
    """Roles of every layer's parameters; the first layer reads the data, the rest the width."""
    roles: list[tuple[str, nn.Parameter]] = []
    for i, layer in enumerate(layers):
        roles.append(("input" if i == 0 else "hidden_weight", layer.weight))
        if layer.bias is not None:
            roles.append(("input" if i == 0 else "hidden_bias", layer.bias))
    roles.append(("output_weight", model.out.weight))
    roles.append(("output_bias", model.out.bias))
    assert len(roles) == len(list(model.parameters()))
    model.roles = roles


def build_model(
    cfg: ModelConfig,
    width: int,
    n_features: int,
    n_classes: int,
    image_shape: tuple[int, int] | None = None,
) -> Model:
    """The space's model at ``width``, initialized for its parametrization.

    Args:
        cfg: the space's model section (family, depth or hidden multipliers, parametrization).
        width: the width multiplier's numerator: hidden units (MLP) or channels (CNN).
        n_features: input size (flattened pixels for the CNN).
        n_classes: output size (logits).
        image_shape: (height, width) of the images, required by the CNN.
    """
    if cfg.family == "gpt":  # n_features: the context; n_classes: the characters
        from study.model_gpt import GPT

        return GPT(  # type: ignore[return-value]
            n_classes,
            n_features,
            width,
            cfg.depth,
            cfg.head_size,
            cfg.base_width_for(width),
            cfg.parametrization == "mup",
        )
    sizes = cfg.hidden_sizes(width)
    layers: list[nn.Module] = []
    blocks: list[nn.Module] = []
    if cfg.family == "mlp":
        fan_in = n_features
        for size in sizes:
            layers.append(nn.Linear(fan_in, size))
            blocks += [layers[-1], nn.ReLU()]
            fan_in = size
    else:
        if image_shape is None:
            raise ValueError("the cnn family needs image data (dataset 'digits').")
        blocks.append(nn.Unflatten(1, (1, *image_shape)))
        channels = 1
        for size in sizes:
            layers.append(nn.Conv2d(channels, size, kernel_size=3, padding=1))
            blocks += [layers[-1], nn.ReLU()]
            channels = size
        blocks += [nn.MaxPool2d(2), nn.Flatten()]
        fan_in = channels * (image_shape[0] // 2) * (image_shape[1] // 2)
    out = nn.Linear(fan_in, n_classes)
    mup = cfg.parametrization == "mup"
    m = width / cfg.base_width_for(width) if mup else 1.0
    model = Model(nn.Sequential(*blocks), out, m, mup)
    _assign_roles(model, layers)
    if mup and m != 1.0:
        with torch.no_grad():
            for role, p in model.roles:
                if role in ("hidden_bias", "output_weight", "output_bias"):
                    p.mul_(math.sqrt(m))
    return model


# lr and weight-decay multipliers per role: (Adam/AdamW lr, SGD lr); decay moves the other way.
def _lr_mult(role: str, optimizer: str, m: float) -> float:
    if role == "norm":  # LayerNorm gains and biases: vector-like, as input biases
        role = "input"
    if optimizer in ("adam", "adamw"):
        return 1.0 / m if role == "hidden_weight" else 1.0
    return 1.0 if role in ("hidden_weight", "output_bias") else m


def param_groups(model: Model, optimizer: str, lr: float, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups: one group under SP; per-role lr (and decay) under muP."""
    if not model.mup:
        return [{"params": [p for _, p in model.roles], "lr": lr, "weight_decay": weight_decay}]
    groups: dict[float, dict] = {}
    for role, p in model.roles:
        k = _lr_mult(role, optimizer, model.width_mult)
        g = groups.setdefault(k, {"params": [], "lr": lr * k, "weight_decay": weight_decay / k})
        g["params"].append(p)
    return list(groups.values())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
