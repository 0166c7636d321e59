"""Search spaces: TOML files in ``search_spaces/`` loaded into a typed, validated config
(:mod:`study.space_config`), compared, changed and written back.

A space names everything one study needs: the data, the model family and its widths, the
learning-rate range, the optimizer and its schedule, the training length, the pruner, the sampler
and the seed. Files are read with :mod:`tomllib` (data only, never code). Every mistake is reported
as one line naming the file, the key and what is allowed (:class:`~study._errors.SpaceError`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from study._errors import SpaceError
from study.space_config import (
    _NOT_COMPARED,
    MAX_DEPTH,
    MAX_EPOCHS,
    MAX_SAMPLES,
    MAX_WIDTH,
    DatasetConfig,
    LRConfig,
    ModelConfig,
    OptimizerConfig,
    PrunerConfig,
    SamplerConfig,
    Space,
    TrainingConfig,
    _FieldError,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_EPOCHS",
    "MAX_SAMPLES",
    "MAX_WIDTH",
    "DatasetConfig",
    "LRConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PrunerConfig",
    "SamplerConfig",
    "Space",
    "TrainingConfig",
    "available_spaces",
    "load_space",
    "resolve_space_path",
    "space_source",
    "space_to_toml",
    "with_changes",
    "space_diff",
    "space_from_dict",
]


# Where a user's model and data were found: a copied folder or another machine holds the same
# study (the data's sha256 tells changed data apart), so these are not compared.
WHERE_KEYS = ("model.factory_dir", "dataset.path", "dataset.factory_dir")


def space_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two space dicts (``name``/``description`` skipped).

    Returns:
        Sorted keys such as ``["lr.high", "model.widths"]``; empty when the spaces agree.
    """
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if (not prefix and key in _NOT_COMPARED) or f"{prefix}{key}" in WHERE_KEYS:
                    continue
                walk(a.get(key), b.get(key), f"{prefix}{key}.")
        elif a != b:
            out.append(prefix[:-1])

    walk(stored, current, "")
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        item = {int: "integers", float: "numbers", str: "strings"}.get(typing.get_args(tp)[0])
        return f"a list of {item or 'values'}"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, str(tp)
    )


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the config's own type."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):  # `int | None`: TOML has no null
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    ok = True
    if origin is Literal:
        ok = value in typing.get_args(tp) and isinstance(value, str)
    elif origin is tuple:
        if isinstance(value, list):
            try:
                return tuple(_convert(v, typing.get_args(tp)[0], key) for v in value)
            except _FieldError:
                pass
        ok = False
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, f"{key}.")
        ok = False
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif tp is str:
        ok = isinstance(value, str)
    if not ok:
        raise _FieldError(key, f"must be {_type_name(tp)}, got {value!r}")
    return value


def _build(cls: type, table: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            allowed = ", ".join(fields)
            raise _FieldError(f"{prefix}{key}", f"unknown key (allowed here: {allowed})")
    kwargs = {}
    for name, f in fields.items():
        if name in table:
            kwargs[name] = _convert(table[name], hints[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _FieldError(f"{prefix}{name}", "is required")
    try:
        return cls(**kwargs)
    except _FieldError as e:
        raise _FieldError(f"{prefix}{e.key}", e.message) from None


def _spaces_dir() -> Path:
    return Path(str(resources.files("search_spaces")))


def available_spaces() -> list[str]:
    """Names of the spaces shipped with the package (``search_spaces/*.toml``)."""
    return sorted(p.stem for p in _spaces_dir().glob("*.toml"))


def resolve_space_path(name_or_path: str) -> Path:
    """A bare name (``mlp_digits``) is looked up in the shipped spaces; anything else is a path.

    Raises:
        SpaceError: the name is not shipped and no such file exists.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml" or len(path.parts) > 1 or path.is_file():
        if not path.is_file():
            raise SpaceError(f"{name_or_path}: no such space file")
        return path
    shipped = _spaces_dir() / f"{name_or_path}.toml"
    if shipped.is_file():
        return shipped
    raise SpaceError(
        f"unknown space {name_or_path!r}: give a path to a .toml file or one of: "
        + ", ".join(available_spaces())
    )


def with_changes(space: Space, changes: dict[str, Any]) -> Space:
    """``space`` with some keys set, validated as a file would be: ``changes`` maps dotted keys
    to values, e.g. ``{"pruner.name": "none", "training.patience": 0}``.

    Raises:
        SpaceError: a key this space does not have, or a value it does not allow.
    """
    d = space.to_dict()
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        table = d.setdefault(section, {}) if section else d
        table[key] = value
    return space_from_dict(d)


def space_to_toml(space: Space) -> str:
    """The space as a TOML file that :func:`load_space` reads back as the same space."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return repr(v)

    d = space.to_dict()
    lines = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for section, table in d.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def space_source(name_or_path: str) -> str:
    """How errors name the file of a space given by name or path."""
    return _display_path(resolve_space_path(name_or_path))


def load_space(name_or_path: str) -> Space:
    """Read and validate a space file.

    Args:
        name_or_path: a shipped space's name (``smoke``) or a path to a TOML file.

    Returns:
        The validated :class:`Space`; ``name`` defaults to the file's stem.

    Raises:
        SpaceError: one line naming the file, the key and what is allowed.
    """
    path = resolve_space_path(name_or_path)
    shown = _display_path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"{shown}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"{shown}: cannot read: {e}") from None
    table.setdefault("name", path.stem)
    try:
        space = _build(Space, table, "")
    except _FieldError as e:
        raise SpaceError(f"{shown}: {e.key}: {e.message}") from None
    # A user's model and data are found from the space file's folder, wherever the run starts.
    folder = path.resolve().parent
    changes: dict[str, Any] = {}
    if space.model.factory and not space.model.factory_dir:
        changes["model.factory_dir"] = str(folder)
    if space.dataset.factory and not space.dataset.factory_dir:
        changes["dataset.factory_dir"] = str(folder)
    if space.dataset.path and not Path(space.dataset.path).is_absolute():
        changes["dataset.path"] = str(folder / space.dataset.path)
    return with_changes(space, changes) if changes else space


def space_from_dict(stored: dict[str, Any]) -> Space:
    """The space a study stored (:meth:`Space.to_dict`), rebuilt: its ``to_dict`` is ``stored``.

    Raises:
        SpaceError: the dict is not a space this version can read (one line, as for a file).
    """

    def drop_none(d: Any) -> Any:  # TOML has no null: a None is a field left at its default
        if isinstance(d, dict):
            return {k: drop_none(v) for k, v in d.items() if v is not None}
        return d

    try:
        return _build(Space, drop_none(stored), "")
    except _FieldError as e:
        raise SpaceError(f"the study's stored space: {e.key}: {e.message}") from None


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        if path.resolve().parent == _spaces_dir().resolve():
            return f"search_spaces/{path.name}"
        return str(path)
