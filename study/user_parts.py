"""The study on your own model and data: a model factory and data from a file or a factory.

A space names them (``model.factory = "net:build"``, ``dataset.path = "data.csv"``,
``dataset.target = "label"``, or ``dataset.factory = "mydata:load"``); before anything is
stored, :func:`prepare_space` loads the data, checks it, stores its sha256 and shape in the
space, builds the narrowest model and runs it on a batch: every mistake is one line, found
before the study exists. Trials (in any process) then get the same arrays from
:func:`user_arrays` and the model from :func:`build_user_model`.

A factory ``module:function`` is imported from the space file's folder, the current folder, or
the installed packages, in that order.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from study._errors import UserError
from study.space_config import DatasetConfig, ModelConfig, Space

__all__ = ["build_user_model", "load_factory", "prepare_space", "user_arrays"]

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


@functools.lru_cache(maxsize=16)
def _load_file(name: str, path: str, mtime_ns: int) -> Any:
    """The module in ``path``, executed once per version of the file (``mtime_ns``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import does: dataclasses and pickling look it up there
    spec.loader.exec_module(module)
    return module


def load_factory(spec: str, folder: str | None, key: str) -> Callable[..., Any]:
    """The function ``spec`` ("module:function") names, imported from ``folder`` first.

    Raises:
        UserError: a malformed spec, a module that is missing or fails to import, a missing
            name, or one that is not callable.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"{key} = {spec!r}: expected 'module:function', e.g. 'net:build'")
    paths = [p for p in (folder, str(Path.cwd())) if p]
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)  # for what the module imports beside it
    files = [Path(p) / f"{module_name}.py" for p in paths]
    try:
        found = next((f for f in files if f.is_file()), None)
        if found is not None:  # this folder's file, even where a module of that name is loaded
            module = _load_file(module_name, str(found.resolve()), found.stat().st_mtime_ns)
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name.split(".")[0] and e.name != module_name:
            raise UserError(f"{key} = {spec!r}: importing {module_name} failed: {e}") from None
        where = " or ".join(paths) or "the installed packages"
        raise UserError(f"{key} = {spec!r}: no module {module_name!r} in {where}") from None
    except Exception as e:
        raise UserError(
            f"{key} = {spec!r}: importing {module_name} failed: {type(e).__name__}: {e}"
        ) from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise UserError(f"{key} = {spec!r}: module {module_name} has no {attr!r}")
    if not callable(fn):
        raise UserError(f"{key} = {spec!r}: {attr} is a {type(fn).__name__}, not a function")
    return fn


def _read_csv(path: Path, target: str | None) -> tuple[np.ndarray, np.ndarray]:
    if target is None:
        raise UserError(f"dataset.path = {path.name}: a CSV needs dataset.target, its label column")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"dataset.path = {path}: cannot read it: {e}") from None
    if len(rows) < 2:
        raise UserError(f"dataset.path = {path}: no data rows under its header")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise UserError(
            f"dataset.target = {target!r}: no such column in {path.name} (columns: "
            + ", ".join(header[:12])
            + (", ..." if len(header) > 12 else "")
            + ")"
        )
    t = header.index(target)
    body = [r for r in rows[1:] if r]
    bad = next((i for i, r in enumerate(body) if len(r) != len(header)), None)
    if bad is not None:
        raise UserError(
            f"dataset.path = {path}: row {bad + 2} has {len(body[bad])} fields, the header "
            f"{len(header)}"
        )
    labels = np.array([r[t].strip() for r in body])
    try:  # numbers where they all are (class numbers, or targets), else text labels
        labels = labels.astype(np.float64)
    except ValueError:
        pass
    try:
        x = np.array([[float(v) for j, v in enumerate(r) if j != t] for r in body])
    except ValueError as e:
        raise UserError(f"dataset.path = {path}: a feature is not a number: {e}") from None
    return x, labels


def _read_npz(path: Path) -> Arrays:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise UserError(f"dataset.path = {path}: cannot read it as .npz: {e}") from None
    if "X" not in arrays or "y" not in arrays:
        raise UserError(
            f"dataset.path = {path}: an .npz needs arrays 'X' and 'y' (it has "
            + (", ".join(sorted(arrays)) or "none")
            + ")"
        )
    if ("X_val" in arrays) != ("y_val" in arrays):
        raise UserError(f"dataset.path = {path}: give both 'X_val' and 'y_val', or neither")
    return arrays["X"], arrays["y"], arrays.get("X_val"), arrays.get("y_val")


def _from_factory(cfg: DatasetConfig) -> Arrays:
    assert cfg.factory is not None
    fn = load_factory(cfg.factory, cfg.factory_dir, "dataset.factory")
    try:
        out = fn()
    except Exception as e:
        raise UserError(
            f"dataset.factory = {cfg.factory!r} raised {type(e).__name__}: {e}"
        ) from None
    if not isinstance(out, tuple) or len(out) not in (2, 4):
        raise UserError(
            f"dataset.factory = {cfg.factory!r} must return (X, y) or (X, y, X_val, y_val), "
            f"got {type(out).__name__}"
        )
    try:
        arrays = [np.asarray(a.detach().cpu() if hasattr(a, "detach") else a) for a in out]
    except (ValueError, TypeError) as e:  # ragged lists, objects numpy cannot hold
        raise UserError(
            f"dataset.factory = {cfg.factory!r} returned arrays numpy cannot read: {e}"
        ) from None
    if any(a.ndim == 0 for a in arrays):
        raise UserError(f"dataset.factory = {cfg.factory!r} returned a single number, not an array")
    return (arrays[0], arrays[1], *(arrays[2:] if len(arrays) == 4 else (None, None)))  # type: ignore[return-value]


def _labels(y: np.ndarray, loss: str, where: str) -> tuple[np.ndarray, int]:
    """Targets as the loss takes them, and the model's outputs: class indices 0..C-1 (C
    classes, the labels' sorted values in that order) for cross_entropy; floats, one column
    per target (one-hot for class labels given as text), for mse."""
    if loss == "cross_entropy":
        values = np.unique(y)
        if y.dtype.kind == "f" and not np.all(np.isfinite(y.astype(float))):
            raise UserError(f"{where}: a label is NaN or infinite")
        if y.ndim != 1:
            raise UserError(f"{where}: cross_entropy needs one label per row, got shape {y.shape}")
        if y.dtype.kind == "f" and not np.all(values == np.round(values)):
            raise UserError(
                f"{where}: cross_entropy needs class labels, got numbers like {values[0]:g}; "
                "for numeric targets set training.loss = 'mse'"
            )
        if len(values) < 2:
            raise UserError(f"{where}: every label is {values[0]}: nothing to learn")
        return np.searchsorted(values, y).astype(np.int64), len(values)
    try:
        targets = y.astype(np.float64)
    except ValueError:
        raise UserError(
            f"{where}: mse needs numeric targets, got labels like {y.flat[0]!r}; for class "
            "labels set training.loss = 'cross_entropy'"
        ) from None
    if not np.all(np.isfinite(targets)):
        raise UserError(f"{where}: a target is NaN or infinite")
    targets = targets.reshape(len(targets), -1)
    return targets, targets.shape[1]


def _stamp(cfg: DatasetConfig) -> tuple[int, int]:
    """The data file's version (modification time, size): a changed file is read again."""
    try:
        st = Path(cfg.path).stat() if cfg.path is not None else None
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size) if st else (0, 0)


def _raw(cfg: DatasetConfig, loss: str) -> tuple[Arrays, int, str]:
    return _read(cfg, loss, _stamp(cfg))


@functools.lru_cache(maxsize=4)
def _read(cfg: DatasetConfig, loss: str, stamp: tuple[int, int]) -> tuple[Arrays, int, str]:
    if cfg.path is not None:
        path = Path(cfg.path)
        if not path.is_file():
            raise UserError(f"dataset.path = {path}: no such file")
        if path.suffix.lower() == ".npz":
            x, y, xv, yv = _read_npz(path)
        else:
            x, y = _read_csv(path, cfg.target)
            xv = yv = None
        where = f"dataset.path = {path.name}"
    else:
        x, y, xv, yv = _from_factory(cfg)
        where = f"dataset.factory = {cfg.factory!r}"
    parts = [("X", x), ("y", y)] + ([("X_val", xv), ("y_val", yv)] if xv is not None else [])
    for name, a in parts:
        if a.size == 0 or len(a) == 0:
            raise UserError(f"{where}: {name} is empty")
    for name, a in (("X", x), ("X_val", xv)):
        if a is None:
            continue
        if a.ndim != 2:
            raise UserError(f"{where}: {name} must be 2-D (rows x features), got shape {a.shape}")
        if a.dtype.kind not in "fiub":
            raise UserError(f"{where}: {name} must be numbers, got {a.dtype}")
        if not np.all(np.isfinite(a)):
            raise UserError(f"{where}: {name} holds NaN or infinite values")
    if len(x) != len(y) or (xv is not None and len(xv) != len(yv)):  # type: ignore[arg-type]
        raise UserError(f"{where}: X and y have different numbers of rows")
    if xv is not None and xv.shape[1] != x.shape[1]:
        raise UserError(f"{where}: X_val has {xv.shape[1]} features, X {x.shape[1]}")
    y_all = y if yv is None else np.concatenate([y, yv])
    targets, n_out = _labels(y_all, loss, where)
    y_t, yv_t = (targets, None) if yv is None else (targets[: len(y)], targets[len(y) :])
    digest = hashlib.sha256()
    for a in (x, y_t, xv, yv_t):
        if a is not None:
            digest.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
            digest.update(str(a.shape).encode())
    arrays: Arrays = (
        x.astype(np.float64),
        y_t,
        None if xv is None else xv.astype(np.float64),
        yv_t,
    )
    return arrays, n_out, digest.hexdigest()


def user_arrays(cfg: DatasetConfig, loss: str) -> Arrays:
    """X, y (and X_val, y_val or None) of the user's data, as the loss takes them.

    Raises:
        UserError: unreadable or unusable data, or data whose sha256 differs from the one the
            space stores (the study was made on other data).
    """
    arrays, _, digest = _raw(cfg, loss)
    if cfg.sha256 is not None and digest != cfg.sha256:
        raise UserError(
            f"the data changed since the study was made (sha256 {cfg.sha256[:12]}..., now "
            f"{digest[:12]}...): restore it, or start a new study (--study-name)"
        )
    return arrays


def build_user_model(cfg: ModelConfig, width: int) -> Any:
    """The user's model at ``width`` (its factory called once)."""
    import torch

    assert cfg.factory is not None
    fn = load_factory(cfg.factory, cfg.factory_dir, "model.factory")
    try:
        model = fn(width)
    except Exception as e:
        raise UserError(
            f"model.factory = {cfg.factory!r} raised {type(e).__name__} at width {width}: {e}"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise UserError(
            f"model.factory = {cfg.factory!r} returned a {type(model).__name__} at width "
            f"{width}, not a torch.nn.Module"
        )
    return model


def is_mup_model(model: Any) -> bool:
    """Built with the ``mup`` package: its parameters carry infshapes (``set_base_shapes``)."""
    return any(hasattr(p, "infshape") for p in model.parameters())


def prepare_space(space: Space) -> Space:
    """``space`` with its user data's sha256 and shape filled in, after every check a trial
    would fail on: the data, and the narrowest model run on a batch of it. A space of built-in
    model and data is returned as it is.

    Raises:
        UserError: the first problem found, in one line (nothing is stored yet).
    """
    from study.space import with_changes

    d, m, t = space.dataset, space.model, space.training
    if d.is_text:  # the gpt family's characters (study.data_text): checked, hashed, shaped
        from study.data_text import text_arrays

        x_tr, _, x_va, _, vocab, digest = text_arrays(d)
        shape = {"n_samples": len(x_tr) + len(x_va), "n_features": d.context, "n_classes": vocab}
        changes = {"dataset.sha256": digest, **{f"dataset.{k}": v for k, v in shape.items()}}
        return with_changes(space, changes)
    if not d.is_users and m.factory is None:
        return space
    changes: dict[str, Any] = {}
    if d.is_users:
        x, y, xv, yv = user_arrays(d, t.loss)
        _, n_out, digest = _raw(d, t.loss)
        n = len(x) + (len(xv) if xv is not None else 0)
        if xv is None:
            n_val = round(d.val_fraction * n)
            if not (1 <= n_val <= n - 1) or n < 4:
                raise UserError(
                    f"the data has {n} rows: too few to split {d.val_fraction:g} of them off "
                    "for validation and train on the rest"
                )
        changes.update(
            {
                "dataset.sha256": digest,
                "dataset.n_samples": n,
                "dataset.n_features": int(x.shape[1]),
                "dataset.n_classes": n_out,
            }
        )
    prepared = with_changes(space, changes) if changes else space
    if m.factory is not None:
        _check_model(prepared)
    return prepared


def _check_model(space: Space) -> None:
    import torch

    width = min(space.model.widths)
    model = build_user_model(space.model, width)
    if space.model.parametrization == "mup" and not is_mup_model(model):
        raise UserError(
            f"model.factory = {space.model.factory!r}: parametrization = 'mup' needs a model "
            "built with the mup package (a MuReadout output layer and mup.set_base_shapes "
            "called in the factory); or set parametrization = 'sp'"
        )
    _, n_features, n_out = space.dataset.shape  # filled in from the data by prepare_space
    batch = torch.randn(8, n_features, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as e:
        raise UserError(
            f"model.factory = {space.model.factory!r}: the model at width {width} fails on a "
            f"batch of {n_features} features: {type(e).__name__}: {e}"
        ) from None
    want = (len(batch), n_out)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        what = "classes" if space.training.loss == "cross_entropy" else "targets"
        raise UserError(
            f"model.factory = {space.model.factory!r}: the model at width {width} outputs "
            f"{got} for a batch of {len(batch)}; the data needs {want} ({n_out} {what})"
        )
