"""The training loop's optimizer: the tool's fused step against torch.optim's own."""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from study import _torch_kernels
from study import train as train_module
from study._torch_kernels import FusedOptimizer, MLPStep
from study.data import load_dataset
from study.model import build_model, param_groups
from study.space import load_space
from study.stacked import train_stacked
from study.train import (
    make_optimizer,
    matmul_arithmetic,
    to_fast_layout,
    train,
)
from tests.conftest import REPO, write_space


def _space(tmp: Path, optimizer: str, parametrization: str, extra: str = "", momentum: float = 0.9):  # type: ignore[no-untyped-def]
    text = (
        f"[model]\nwidths = [16, 64]\nparametrization = '{parametrization}'\n"
        f"[lr]\nlow = 1e-4\nhigh = 1.0\n[optimizer]\nname = '{optimizer}'\n"
        f"weight_decay = 1e-2\nmomentum = {momentum}\n"
        f"[training]\nepochs = 4\nbatch_size = 128\n{extra}"
    )
    return load_space(str(write_space(tmp, f"t_{optimizer}_{parametrization}", text)))


def _torch_optim(name: str, groups: list[dict], momentum: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(groups, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, fused=True)
    return torch.optim.SGD(groups, momentum=momentum, fused=True)


@pytest.mark.parametrize(
    "optimizer,parametrization,momentum",
    [
        ("adam", "sp", 0.9),
        ("adam", "mup", 0.9),
        ("adamw", "sp", 0.9),
        ("adamw", "mup", 0.9),
        ("sgd", "sp", 0.9),
        ("sgd", "mup", 0.9),
        ("sgd", "sp", 0.0),
    ],
)
def test_fused_step_equals_torch_optim_fused_bit_for_bit(
    tmp_path: Path, optimizer: str, parametrization: str, momentum: float
) -> None:
    space = _space(tmp_path, optimizer, parametrization, momentum=momentum)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 64, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    models, opts = [], []
    for kind in ("torch", "ours"):
        torch.manual_seed(1)
        model = build_model(space.model, 64, 64, 10)
        groups = param_groups(model, optimizer, 3e-2, space.optimizer.weight_decay)
        opts.append(
            _torch_optim(optimizer, groups, momentum)
            if kind == "torch"
            else FusedOptimizer(groups, optimizer, momentum)
        )
        models.append(model)
    assert (len(opts[1].param_groups) > 1) == (parametrization == "mup")  # per-layer lrs
    for step in range(8):
        for model, opt in zip(models, opts, strict=True):
            if step == 4:  # a schedule changes lr between steps
                for g in opt.param_groups:
                    g["lr"] *= 0.5
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(models[1].out.weight, build_model(space.model, 64, 64, 10).out.weight)


def test_training_uses_the_fused_step_on_cpu_and_torch_optim_for_plateau(tmp_path: Path) -> None:
    model = build_model(_space(tmp_path, "adam", "sp").model, 16, 64, 10)
    assert isinstance(make_optimizer(_space(tmp_path, "adam", "sp"), model, 1e-3), FusedOptimizer)
    plateau = _space(tmp_path, "adam", "sp", "schedule = 'plateau'\n")
    assert isinstance(make_optimizer(plateau, model, 1e-3), torch.optim.Adam)


def test_cosine_schedule_gives_torch_cosine_annealing_lrs(tmp_path: Path) -> None:
    space = _space(tmp_path, "adam", "mup", "schedule = 'cosine'\n")
    data = load_dataset(space.dataset, space.seed)
    lrs: list[float] = []
    train(space, data, 64, 1e-2, seed=0, on_epoch=lambda ep: lrs.append(ep.lr) is not None)
    torch.manual_seed(0)
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=space.training.epochs)
    expected = []
    for _ in range(space.training.epochs):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert len(lrs) == space.training.epochs
    for got, want in zip(lrs, expected, strict=True):
        assert math.isclose(got, want, rel_tol=1e-12)
    assert lrs[-1] < lrs[0] / 2


def test_a_trial_does_not_import_torch_dynamo() -> None:
    """torch.optim's constructor imports torch._dynamo (about a second per process)."""
    code = (
        "import sys\n"
        "from study.data import load_dataset\n"
        "from study.space import load_space\n"
        "from study.train import train\n"
        "space = load_space('smoke')\n"
        "r = train(space, load_dataset(space.dataset, 0), 16, 1e-3, seed=0)\n"
        "assert r.epochs_run == space.training.epochs\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "optimizer,parametrization,extra",
    [
        ("adam", "sp", ""),
        ("adam", "mup", ""),
        ("sgd", "mup", "schedule = 'cosine'\n"),
        ("adamw", "sp", "schedule = 'plateau'\n"),
        ("adam", "sp", "matmul_precision = 'medium'\n"),
    ],
)
def test_the_hand_computed_mlp_step_trains_as_autograd_bit_for_bit(
    optimizer: str,
    parametrization: str,
    extra: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    space = _space(tmp_path, optimizer, parametrization, extra)
    data = load_dataset(space.dataset, space.seed)
    hand = train(space, data, 64, 3e-3, seed=5)
    with monkeypatch.context() as m:
        m.setattr(MLPStep, "__call__", lambda *a: pytest.fail("the hand step ran"))
        with pytest.raises(pytest.fail.Exception):
            train(space, data, 64, 3e-3, seed=5)  # the hand step is what trains an MLP on CPU
    monkeypatch.setattr(MLPStep, "supports", staticmethod(lambda model: False))
    auto = train(space, data, 64, 3e-3, seed=5)
    assert hand.curve == auto.curve  # exact: the same ops in the same order
    assert (hand.final_train_loss, hand.best_val_loss) == (
        auto.final_train_loss,
        auto.best_val_loss,
    )


def test_a_cnn_trains_channels_last_on_cpu_with_the_contiguous_curve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    space = load_space("cnn_digits")
    space = dataclasses.replace(
        space, training=dataclasses.replace(space.training, epochs=2, patience=0)
    )
    cpu = torch.device("cpu")
    cnn = build_model(space.model, 8, 64, 10, (8, 8))
    to_fast_layout(cnn, cpu)
    convs = [p for p in cnn.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not all(p.is_contiguous() for p in convs)  # the 8 -> 8 conv: a different layout
    mlp = build_model(load_space("mlp_digits").model, 32, 64, 10)
    to_fast_layout(mlp, cpu)
    assert all(p.is_contiguous() for p in mlp.parameters())

    laid_out: list[nn.Module] = []

    def spy(model: nn.Module, device: torch.device) -> None:
        to_fast_layout(model, device)
        laid_out.append(model)

    data = load_dataset(space.dataset, space.seed)
    monkeypatch.setattr(train_module, "to_fast_layout", spy)
    fast = train(space, data, 16, 1e-3, 0)
    assert len(laid_out) == 1  # train() put its model in the fast layout
    monkeypatch.setattr(train_module, "to_fast_layout", lambda model, device: None)
    plain = train(space, data, 16, 1e-3, 0)
    assert len(fast.curve) == len(plain.curve) == 2
    assert fast.curve == pytest.approx(plain.curve, rel=1e-5)  # float rounding only


def test_the_hand_step_refuses_a_model_that_is_not_an_mlp() -> None:
    space = load_space("cnn_digits")
    model = build_model(space.model, 8, 64, 10, (8, 8))
    assert not MLPStep.supports(model)
    with pytest.raises(ValueError, match="needs an MLP"):
        MLPStep(model)


def test_a_run_trains_under_its_spaces_matmul_precision_and_puts_the_old_one_back(
    tmp_path: Path,
) -> None:
    space = _space(tmp_path, "adam", "sp", "matmul_precision = 'medium'\n")
    data = load_dataset(space.dataset, space.seed)
    seen: list[str] = []

    def single(ep: object) -> bool:
        seen.append(torch.get_float32_matmul_precision())
        return False

    def stacked(members: list[int], eps: list[object]) -> list[bool]:
        seen.append(torch.get_float32_matmul_precision())
        return [False] * len(members)

    before = torch.get_float32_matmul_precision()
    assert before == "highest"
    train(space, data, 16, 1e-3, seed=0, on_epoch=single)
    assert torch.get_float32_matmul_precision() == before
    train_stacked(space, data, 16, [1e-3, 1e-2], [0, 1], on_epoch=stacked)
    assert torch.get_float32_matmul_precision() == before
    assert seen == ["medium"] * (2 * space.training.epochs)


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_matmul_arithmetic_names_what_torch_computes_on_this_cpu(precision: str) -> None:
    """Whatever this CPU does under ``precision``, the name fits a training-sized matmul of
    random numbers: "bf16" means the product of the inputs rounded to bfloat16 (summed in fp32),
    "fp32" the plain product (bit for bit under "highest"; another fp32 kernel may sum in
    another order)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=gen), torch.randn(256, 128, generator=gen)
    exact = a @ b
    rounded = a.bfloat16().float() @ b.bfloat16().float()  # bf16 products are exact in fp32
    torch.set_float32_matmul_precision(precision)
    try:
        got = a @ b
    finally:
        torch.set_float32_matmul_precision("highest")
    arithmetic = matmul_arithmetic(precision, torch.device("cpu"))
    to_exact, to_rounded = (got - exact).abs().max(), (got - rounded).abs().max()
    assert to_rounded > 1e-2  # the two references differ far beyond fp32 summation order
    if precision == "highest":
        assert arithmetic == "fp32" and torch.equal(got, exact)
    elif arithmetic == "fp32":
        assert to_exact < 1e-3 < to_rounded
    else:
        assert arithmetic == "bf16" and precision == "medium"
        assert to_rounded < 1e-3 < to_exact


def test_matmul_arithmetic_is_read_from_how_its_probe_was_rounded() -> None:
    from study.train import _PROBE, _arithmetic_of

    probe = torch.tensor(_PROBE)
    assert _arithmetic_of(probe.item()) == "fp32"
    assert _arithmetic_of(probe.bfloat16().item()) == "bf16"
    tf32 = (probe.view(torch.int32) & ~0x1FFF).view(torch.float32)  # 10 of 23 mantissa bits kept
    assert _arithmetic_of(tf32.item()) == "tf32"
    assert _arithmetic_of(probe.half().item()) == "tf32"  # fp16 keeps as many bits as tf32
    assert _arithmetic_of(1 + 2**-8) == "reduced"


def test_early_stopping_ends_the_run_and_changes_nothing_before_it(tmp_path: Path) -> None:
    space = _space(tmp_path, "adam", "sp", "patience = 2\n")
    space = dataclasses.replace(space, training=dataclasses.replace(space.training, epochs=40))
    data = load_dataset(space.dataset, space.seed)
    early = train(space, data, 64, 5e-2, seed=3)
    full = train(
        dataclasses.replace(space, training=dataclasses.replace(space.training, patience=0)),
        data,
        64,
        5e-2,
        seed=3,
    )
    assert early.early_stopped and not full.early_stopped
    assert early.epochs_run == early.best_epoch + 2 < full.epochs_run == 40
    assert early.curve == full.curve[: early.epochs_run]  # the same run, cut short
    assert early.best_val_loss == min(early.curve)
    # a run whose patience runs out at its last epoch ran every epoch: not stopped early
    last = dataclasses.replace(
        space, training=dataclasses.replace(space.training, epochs=early.epochs_run)
    )
    whole = train(last, data, 64, 5e-2, seed=3)
    assert whole.curve == early.curve and not whole.early_stopped


@pytest.mark.parametrize("stacked", [False, True])
def test_a_runs_time_is_split_into_setup_evaluation_callback_and_steps(
    tmp_path: Path, stacked: bool
) -> None:
    """The bench's steps-only FLOP/s is the run's time less its setup, evaluations and
    callback: each part is measured, and together they stay within the run's time."""
    import time

    space = _space(tmp_path, "adam", "sp")
    data = load_dataset(space.dataset, space.seed)
    inside = []

    def on_epoch(*_: object) -> bool | list[bool]:
        t = time.perf_counter()
        sum(range(20_000))  # some work of the caller's, timed here too
        inside.append(time.perf_counter() - t)
        return [False, False] if stacked else False

    if stacked:
        r = train_stacked(space, data, 16, [1e-3, 1e-2], [0, 1], on_epoch)[0]
        share = 2  # each member gets its share of the stack's time
    else:
        r, share = train(space, data, 16, 1e-3, 0, on_epoch), 1
    assert r.setup_seconds > 0 and r.eval_seconds > 0
    assert r.callback_seconds >= sum(inside) / share
    assert r.setup_seconds + r.eval_seconds + r.callback_seconds < r.seconds


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_the_public_torch_path_trains_as_the_private_kernels_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    """STUDY_PUBLIC_TORCH=1 (PRIVATE_KERNELS False): torch.optim, autograd and the stack's
    unfused Adam, none of the private kernels; the same curves, alone and stacked."""
    space = _space(tmp_path, optimizer, "sp")
    data = load_dataset(space.dataset, space.seed)
    private = train(space, data, 16, 1e-2, seed=1)
    private_stack = train_stacked(space, data, 16, [1e-2, 1e-3], [1, 2])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a private kernel ran")

    monkeypatch.setattr(_torch_kernels, "PRIVATE_KERNELS", False)
    monkeypatch.setattr(FusedOptimizer, "step", refuse)
    monkeypatch.setattr(MLPStep, "__call__", refuse)
    monkeypatch.setattr(_torch_kernels, "fused_adam", refuse)
    monkeypatch.setattr("study.stacked.fused_adam_updates", refuse)
    public = train(space, data, 16, 1e-2, seed=1)
    public_stack = train_stacked(space, data, 16, [1e-2, 1e-3], [1, 2])
    assert public.curve == pytest.approx(private.curve, rel=1e-4)
    for a, b in zip(public_stack, private_stack, strict=True):
        assert a.curve == pytest.approx(b.curve, rel=1e-4)
