"""Datasets as tensors on the training device; minibatches are index slices (no DataLoader).

``digits`` is scikit-learn's 1,797 real 8x8 handwritten digits (it ships with the package).
``teacher_student`` labels Gaussian inputs with a fixed random teacher MLP: a second, synthetic
task whose difficulty the space controls. Both are split into train and validation sets,
stratified by class and fixed by the space's seed, and standardized with training statistics only.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from study.space import DatasetConfig

__all__ = ["Dataset", "load_dataset"]


@dataclass(frozen=True)
class Dataset:
    x_train: torch.Tensor  # float32 [n_train, n_features]
    y_train: torch.Tensor  # int64 [n_train] (cross_entropy), float32 [n_train, n_classes] (mse)
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int  # the model's outputs: classes, or targets under mse
    # The 8x8 image shape for digits (used by convolutional models), None otherwise.
    image_shape: tuple[int, int] | None = None

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, read from the file the package ships (importing scikit-learn
    costs each trial process about a second; the file is the same data ``load_digits`` gives)."""
    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].astype(np.float64), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # another layout: let scikit-learn find it

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float64), y.astype(np.int64)


def _teacher_student(cfg: DatasetConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 7919])
    x = rng.standard_normal((cfg.n_samples, cfg.n_features))
    w1 = rng.standard_normal((cfg.n_features, cfg.teacher_width)) / np.sqrt(cfg.n_features)
    w2 = rng.standard_normal((cfg.teacher_width, cfg.n_classes)) / np.sqrt(cfg.teacher_width)
    y = np.argmax(np.maximum(x @ w1, 0.0) @ w2, axis=1)
    noisy = rng.random(cfg.n_samples) < cfg.label_noise
    y[noisy] = rng.integers(0, cfg.n_classes, int(noisy.sum()))
    return x, y.astype(np.int64)


def _split_indices(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Train and validation indices, stratified by class where every class has 2 or more."""
    rng = np.random.default_rng([seed, 104729])
    counts = np.bincount(y)
    if counts[counts > 0].min() < 2:  # a class of one cannot sit on both sides
        order = rng.permutation(len(y))
        n_val = min(len(y) - 1, max(1, round(val_fraction * len(y))))  # neither side empty
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    train, val = [], []
    for c in np.flatnonzero(counts):
        members = rng.permutation(np.flatnonzero(y == c))
        n_val = min(len(members) - 1, max(1, round(val_fraction * len(members))))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


@functools.lru_cache(maxsize=4)
def _split(cfg: DatasetConfig, seed: int, loss: str = "cross_entropy") -> tuple[np.ndarray, ...]:
    if cfg.is_users:
        from study.user_parts import user_arrays

        x, y, x_va, y_va = user_arrays(cfg, loss)
        if x_va is None:  # split here: stratified for class labels, at random for targets
            labels = y if y.ndim == 1 else np.zeros(len(y), dtype=np.int64)
            tr, va = _split_indices(labels, cfg.val_fraction, seed)
            x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
        else:
            x_tr, y_tr = x, y
    else:
        x, y = _digits() if cfg.name == "digits" else _teacher_student(cfg, seed)
        tr, va = _split_indices(y, cfg.val_fraction, seed)
        x_tr, y_tr, x_va, y_va = x[tr], y[tr], x[va], y[va]
        if loss == "mse":  # class labels as one-hot targets
            eye = np.eye(cfg.shape[2])
            y_tr, y_va = eye[y_tr], eye[y_va]
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0  # constant pixels (digits' borders) stay zero instead of dividing by 0
    return (x_tr - mean) / std, y_tr, (x_va - mean) / std, y_va


def load_dataset(
    cfg: DatasetConfig, seed: int, device: torch.device | str = "cpu", loss: str = "cross_entropy"
) -> Dataset:
    """Load, split and standardize a dataset and move it to ``device``.

    Args:
        cfg: the space's dataset section.
        seed: fixes the train/validation split (and the teacher for ``teacher_student``).
        device: where the tensors live for the whole study.
        loss: the space's ``training.loss``: mse gets float targets (class labels one-hot).
    """

    def f32(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32, device=device)

    def i64(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64, device=device)

    if cfg.is_text:  # windows of character ids (study.data_text)
        from study.data_text import text_arrays

        x_tr, y_tr, x_va, y_va, vocab, _ = text_arrays(cfg)
        return Dataset(i64(x_tr), i64(y_tr), i64(x_va), i64(y_va), int(vocab))
    x_tr, y_tr, x_va, y_va = _split(cfg, seed, loss)
    n_classes = cfg.shape[2]

    target = f32 if loss == "mse" else i64
    return Dataset(
        x_train=f32(x_tr),
        y_train=target(y_tr),
        x_val=f32(x_va),
        y_val=target(y_va),
        n_classes=n_classes,
        image_shape=(8, 8) if cfg.name == "digits" and not cfg.is_users else None,
    )
