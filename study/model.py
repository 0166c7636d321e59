"""Models whose hidden width is the study's scientific parameter."""

from __future__ import annotations

from torch import nn

from study.space import ModelConfig

__all__ = ["build_model", "count_parameters"]


def build_model(cfg: ModelConfig, width: int, n_features: int, n_classes: int) -> nn.Module:
    """An MLP ``n_features -> width x depth -> n_classes`` with ReLU, PyTorch's default init.

    Args:
        cfg: the space's model section (family, depth).
        width: hidden units of every hidden layer.
        n_features: input size.
        n_classes: output size (logits).
    """
    layers: list[nn.Module] = []
    fan_in = n_features
    for _ in range(cfg.depth):
        layers += [nn.Linear(fan_in, width), nn.ReLU()]
        fan_in = width
    layers.append(nn.Linear(fan_in, n_classes))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
