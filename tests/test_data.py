from __future__ import annotations

import numpy as np

from study.data import _digits, _split_indices, load_dataset
from study.space import DatasetConfig


def test_digits_are_scikit_learns_digits() -> None:
    from sklearn.datasets import load_digits

    x, y = _digits()
    ref_x, ref_y = load_digits(return_X_y=True)
    assert np.array_equal(x, ref_x) and np.array_equal(y, ref_y)


def test_split_is_stratified_disjoint_complete_and_fixed_by_the_seed() -> None:
    y = np.repeat(np.arange(10), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    tr, va = _split_indices(y, 0.25, seed=0)
    assert len(np.intersect1d(tr, va)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(y)))
    share = np.bincount(y[va], minlength=10) / np.bincount(y)
    assert np.all(np.abs(share - 0.25) < 0.01)
    again = _split_indices(y, 0.25, seed=0)
    other = _split_indices(y, 0.25, seed=1)
    assert np.array_equal(again[1], va) and not np.array_equal(other[1], va)


def test_a_class_of_one_falls_back_to_an_unstratified_split() -> None:
    y = np.array([0] * 20 + [1] * 19 + [2])
    tr, va = _split_indices(y, 0.25, seed=0)
    assert len(va) == 10 and len(tr) == 30 and len(np.intersect1d(tr, va)) == 0


def test_digits_are_standardized_on_training_statistics() -> None:
    data = load_dataset(DatasetConfig(), seed=0)
    assert data.x_train.shape == (1347, 64) and data.x_val.shape == (450, 64)
    mean = data.x_train.mean(dim=0)
    assert float(mean.abs().max()) < 1e-5
