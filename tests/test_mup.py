"""muP written by hand (study.model) against the mup package, and its invariants."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from study.model import build_model, param_groups
from study.space import ModelConfig

try:
    import mup
except ImportError:  # pragma: no cover - depends on the environment
    mup = None
    if os.environ.get("REQUIRE_MUP"):
        raise

BASE = 32
N_IN, N_OUT = 64, 10


def _cfg(family: str = "mlp", parametrization: str = "mup") -> ModelConfig:
    return ModelConfig(
        widths=(BASE, 64, 256), family=family, parametrization=parametrization, base_width=BASE
    )


def _reference(family: str, width: int) -> nn.Module:
    """The same network written with the mup package (MuReadout as the output layer)."""
    if family == "mlp":
        hidden = [nn.Linear(N_IN, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()]
    else:
        hidden = [
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        ]
    fan_in = width if family == "mlp" else width * 16
    return nn.Sequential(nn.Sequential(*hidden), mup.MuReadout(fan_in, N_OUT))


def _mup_reference(family: str, width: int, seed: int) -> nn.Module:
    base, delta = _reference(family, BASE), _reference(family, 2 * BASE)
    torch.manual_seed(seed)
    model = _reference(family, width)
    mup.set_base_shapes(model, base, delta=delta)
    return model


def _optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    kw = dict(lr=lr, weight_decay=1e-2)
    if name == "adam":
        return mup.MuAdam(params, **kw)
    if name == "adamw":
        return mup.MuAdamW(params, **kw)
    return mup.MuSGD(params, momentum=0.9, **kw)


def _ours(name: str, model) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    groups = param_groups(model, name, 1e-2, 1e-2)
    if name == "adam":
        return torch.optim.Adam(groups, lr=1e-2)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=1e-2)
    return torch.optim.SGD(groups, lr=1e-2, momentum=0.9)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 6) -> torch.Tensor:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(32, N_IN, generator=gen)
    y = torch.randint(0, N_OUT, (32,), generator=gen)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model(x)


@pytest.mark.skipif(mup is None, reason="mup not installed: pip install --no-deps mup==1.0.0")
@pytest.mark.parametrize("family", ["mlp", "cnn"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
@pytest.mark.parametrize("width", [64, 256])
def test_mup_matches_the_mup_package_after_several_steps(
    family: str, optimizer: str, width: int
) -> None:
    ref = _mup_reference(family, width, seed=7)
    torch.manual_seed(7)
    ours = build_model(_cfg(family), width, N_IN, N_OUT, image_shape=(8, 8))
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), "initialization differs"
    out_ref = _train(ref, _optimizer(optimizer, ref.parameters(), 1e-2))
    out = _train(ours, _ours(optimizer, ours))
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["mlp", "cnn"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_mup_at_base_width_equals_sp_exactly(family: str, optimizer: str) -> None:
    torch.manual_seed(3)
    mup_model = build_model(_cfg(family, "mup"), BASE, N_IN, N_OUT, image_shape=(8, 8))
    torch.manual_seed(3)
    sp_model = build_model(_cfg(family, "sp"), BASE, N_IN, N_OUT, image_shape=(8, 8))
    out_mup = _train(mup_model, _ours(optimizer, mup_model))
    out_sp = _train(sp_model, _ours(optimizer, sp_model))
    assert torch.equal(out_mup, out_sp)


def test_per_layer_lr_groups_follow_the_table() -> None:
    m = 256 / BASE
    model = build_model(_cfg("mlp"), 256, N_IN, N_OUT)
    role_of = {id(p): role for role, p in model.roles}
    expected = {
        "adam": {
            "input": 1,
            "hidden_weight": 1 / m,
            "hidden_bias": 1,
            "output_weight": 1,
            "output_bias": 1,
        },
        "sgd": {
            "input": m,
            "hidden_weight": 1,
            "hidden_bias": m,
            "output_weight": m,
            "output_bias": 1,
        },
    }
    for name, table in expected.items():
        seen = {}
        for g in param_groups(model, name, lr=0.1, weight_decay=0.01):
            for p in g["params"]:
                seen[role_of[id(p)]] = (g["lr"] / 0.1, g["weight_decay"] / 0.01)
        assert set(seen) == set(table)
        for role, k in table.items():
            assert seen[role][0] == pytest.approx(k), (name, role)
            assert seen[role][1] == pytest.approx(1 / k), (name, role)


def test_mup_output_is_scaled_by_one_over_m_and_init_rescaled() -> None:
    torch.manual_seed(0)
    sp = build_model(_cfg("mlp", "sp"), 256, N_IN, N_OUT)
    torch.manual_seed(0)
    mp = build_model(_cfg("mlp", "mup"), 256, N_IN, N_OUT)
    m = 256 / BASE
    torch.testing.assert_close(mp.out.weight, sp.out.weight * m**0.5)
    torch.testing.assert_close(mp.hidden[2].bias, sp.hidden[2].bias * m**0.5)
    torch.testing.assert_close(mp.hidden[0].weight, sp.hidden[0].weight)


def test_hidden_multipliers_scale_every_hidden_layer_with_the_width() -> None:
    cfg = ModelConfig(widths=(16, 32), depth=2, hidden_multipliers=(4.0, 1.0))
    model = build_model(cfg, 16, N_IN, N_OUT)
    assert [layer.out_features for layer in model.hidden if isinstance(layer, nn.Linear)] == [
        64,
        16,
    ]
    model = build_model(cfg, 32, N_IN, N_OUT)
    assert [layer.out_features for layer in model.hidden if isinstance(layer, nn.Linear)] == [
        128,
        32,
    ]
