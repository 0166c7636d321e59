"""Search spaces: TOML files in ``search_spaces/`` loaded into a typed, validated config.

A space names everything one study needs: the data, the model family and its widths, the
learning-rate range, the optimizer and its schedule, the training length, the pruner, the sampler
and the seed. Files are read with :mod:`tomllib` (data only, never code). Every mistake is reported
as one line naming the file, the key and what is allowed (:class:`~study._errors.SpaceError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from study._errors import SpaceError

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


class _FieldError(Exception):
    """Raised by a config's checks; the loader adds the file name and the section."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise _FieldError(key, message)


# Bounds on sizes, so that a typo (an extra zero, an int64) is refused with its key instead of
# overflowing, hanging or allocating after narrower widths trained. They admit far more than a
# machine can train; what a space costs on this machine is checked from its shapes too
# (:func:`study.cost.check_memory`).
# Units of one layer: widths, each hidden layer after hidden_multipliers, and the data's sizes.
MAX_WIDTH = 2**24
# Hidden layers: each is built one by one (10**8 of them hangs before the first epoch).
MAX_DEPTH = 1_000
# At about a millisecond an epoch for the smallest model, 10**5 epochs are hours a trial.
MAX_EPOCHS = 100_000
# teacher_student's samples, and the largest batch (one of all the training samples: full batch).
MAX_SAMPLES = 2**30
# digits: scikit-learn's images, their pixels and classes.
_DIGITS_SHAPE = (1797, 64, 10)


def _require_int(value: int, low: int, high: int, key: str, what: str = "an integer") -> None:
    _require(low <= value <= high, key, f"must be {what} from {low:,} to {high:,}, got {value:,}")


@dataclass(frozen=True)
class DatasetConfig:
    # digits: scikit-learn's 1,797 real 8x8 images (ships with the package, no download).
    # teacher_student: Gaussian inputs labelled by a fixed random teacher MLP.
    name: Literal["digits", "teacher_student"] = "digits"
    # A quarter of the data for validation: ~450 digits, enough to rank learning rates.
    val_fraction: float = 0.25
    # teacher_student only: samples, input features, classes, teacher hidden width, and the
    # fraction of labels replaced by random ones (0 = a perfectly learnable task).
    n_samples: int = 4000
    n_features: int = 32
    n_classes: int = 10
    teacher_width: int = 64
    label_noise: float = 0.0

    def __post_init__(self) -> None:
        _require(0 < self.val_fraction < 1, "val_fraction", "must be between 0 and 1 exclusive")
        _require_int(self.n_samples, 20, MAX_SAMPLES, "n_samples")
        _require_int(self.n_features, 1, MAX_WIDTH, "n_features")
        _require_int(self.n_classes, 2, MAX_WIDTH, "n_classes")
        _require_int(self.teacher_width, 1, MAX_WIDTH, "teacher_width")
        _require(0 <= self.label_noise <= 1, "label_noise", "must be between 0 and 1 inclusive")
        n, n_val = self.shape[0], self.n_val
        _require(
            1 <= n_val <= n - 1,
            "val_fraction",
            f"{self.val_fraction:g} of {n:,} samples leaves {n_val:,} for validation and "
            f"{n - n_val:,} for training; both need at least one",
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """Samples, input features and classes of the dataset."""
        if self.name == "digits":
            return _DIGITS_SHAPE
        return self.n_samples, self.n_features, self.n_classes

    @property
    def n_val(self) -> int:
        """Validation samples (about; a stratified split rounds class by class)."""
        return round(self.val_fraction * self.shape[0])


@dataclass(frozen=True)
class ModelConfig:
    # The scientific parameter: every width listed gets an equal share of the trials.
    # mlp: hidden units of each hidden layer; cnn: channels of each 3x3 conv (8x8 digits).
    widths: tuple[int, ...]
    family: Literal["mlp", "cnn"] = "mlp"
    # Hidden layers; kept fixed while width varies (the optimal lr depends on depth too).
    depth: int = 2
    # Per-layer sizes as multiples of the width, e.g. [4, 1] at width 16 is the article's
    # 64 -> 16 network; the width then scales all hidden layers together. Empty: all 1.
    hidden_multipliers: tuple[float, ...] = ()
    # sp: PyTorch's default init and one global lr. mup: Maximal Update Parametrization
    # (per-layer lr, output multiplier 1/m, output init), equal to SP at base_width.
    parametrization: Literal["sp", "mup"] = "sp"
    # The width at which muP equals SP; default: the narrowest width.
    base_width: int | None = None

    def __post_init__(self) -> None:
        _require(len(self.widths) >= 1, "widths", "must list at least one width")
        for w in self.widths:
            _require(w > 0, "widths", f"must be positive integers, got {w}")
            _require(w <= MAX_WIDTH, "widths", f"must be at most {MAX_WIDTH:,}, got {w:,}")
        _require(len(set(self.widths)) == len(self.widths), "widths", "must not repeat a width")
        _require_int(self.depth, 1, MAX_DEPTH, "depth", "a number of hidden layers")
        for k in self.hidden_multipliers:
            _require(
                0 < k <= MAX_WIDTH,
                "hidden_multipliers",
                f"must be positive numbers up to {MAX_WIDTH:,}, got {k:g}",
            )
        _require(
            not self.hidden_multipliers or len(self.hidden_multipliers) == self.depth,
            "depth",
            f"must equal the number of hidden_multipliers ({len(self.hidden_multipliers)})",
        )
        widest = max(self.hidden_sizes(max(self.widths)))
        _require(
            widest <= MAX_WIDTH,
            "hidden_multipliers",
            f"make a layer of {widest:,} units at width {max(self.widths):,}; "
            f"at most {MAX_WIDTH:,} are allowed",
        )
        if self.base_width is not None:
            _require_int(self.base_width, 1, MAX_WIDTH, "base_width")

    def base_width_for(self, width: int) -> int:
        """The muP base width (``width`` / base is the width multiplier m)."""
        return self.base_width or min(self.widths)

    def hidden_sizes(self, width: int) -> list[int]:
        """Units (MLP) or channels (CNN) of each hidden layer at ``width``."""
        mults = self.hidden_multipliers or (1.0,) * self.depth
        return [max(1, round(k * width)) for k in mults]


@dataclass(frozen=True)
class LRConfig:
    # Log-uniform range; wide enough that every width's optimum sits inside it with margin.
    low: float
    high: float

    def __post_init__(self) -> None:
        _require(self.low > 0 and math.isfinite(self.low), "low", "must be a positive number")
        _require(math.isfinite(self.high), "high", "must be a finite number")
        _require(
            self.low < self.high,
            "low",
            f"must be less than lr.high (got low={self.low:g}, high={self.high:g})",
        )


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    # sgd only. 0.9 is the usual heavy-ball value.
    momentum: float = 0.9
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        _require(
            self.weight_decay >= 0 and math.isfinite(self.weight_decay),
            "weight_decay",
            "must be a non-negative finite number",
        )


@dataclass(frozen=True)
class TrainingConfig:
    # The same length for every trial: the study never tunes the number of steps.
    epochs: int = 20
    batch_size: int = 64
    # none | cosine (to zero over the epochs) | plateau (ReduceLROnPlateau on validation loss,
    # as in the 64->16 example of the practitioner's article).
    schedule: Literal["none", "cosine", "plateau"] = "none"
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    # An epoch whose mean training loss or validation loss exceeds this multiple of the
    # validation loss before training (or is NaN/inf) ends the trial as diverged. Measured on
    # digits: a blown-up Adam run reaches 40-10^8 x the initial loss in its first epoch.
    divergence_factor: float = 10.0
    # torch.set_float32_matmul_precision while a trial trains: "highest" multiplies in fp32;
    # "medium" lets a CPU multiply in bf16 (inputs rounded to bf16, fp32 sums, weights and
    # optimizer in fp32) where oneDNN can (AVX-512 or AMX), and a GPU in TF32, as "high" does
    # there. On this project's AMX machine "medium" made the default study 1.3-1.5x faster
    # (1.06-1.28x with early stopping, which cuts most of the wide epochs it sped up), with lr*
    # unchanged within the run-to-run spread (docs/speed.md, "Matmul precision").
    matmul_precision: Literal["highest", "high", "medium"] = "highest"
    # Early stopping: a trial whose validation loss has not improved for this many epochs stops
    # there and completes with its best loss (0: off, every trial trains every epoch). Its value
    # changes only where the loss would have improved again later: docs/speed.md, "Early stopping".
    patience: int = 0

    def __post_init__(self) -> None:
        _require_int(self.epochs, 1, MAX_EPOCHS, "epochs")
        _require(self.patience >= 0, "patience", "must be a non-negative integer (0: off)")
        _require_int(self.batch_size, 1, MAX_SAMPLES, "batch_size")
        _require(0 < self.plateau_factor < 1, "plateau_factor", "must be between 0 and 1")
        _require(self.plateau_patience >= 0, "plateau_patience", "must be non-negative")
        _require(self.divergence_factor > 1, "divergence_factor", "must be greater than 1")


@dataclass(frozen=True)
class PrunerConfig:
    name: Literal["none", "median", "percentile", "successive_halving", "hyperband"] = "median"
    # Compare a trial only with trials of its own width. A study-wide pruner prunes narrow
    # nets for being narrow (FIELD-NOTES section 3: width-32 optimum found in 10% of orderings).
    per_width: bool = True
    # median and percentile: trials (of the width) that must complete before pruning, and
    # epochs before the first pruning decision of each trial.
    n_startup_trials: int = 5
    n_warmup_steps: int = 5
    # percentile: a trial is pruned when its best loss so far is worse than this percentile of
    # its width's completed trials at the same epoch (50 is the median pruner; 75 prunes only
    # the worst quarter; 25 all but the best quarter: scripts/pruner_replay.py).
    percentile: float = 50.0
    # Never prune a trial whose lr lies within this many log2 units of its width's best COMPLETE
    # trial (0: off; needs per_width). The report fits lr* to the complete trials within 4 log2
    # of the best one (analysis.WINDOW_LOG2), so such a trial may enter the fit: in a replay of
    # unpruned curves (scripts/pruner_replay.py) no width's lr* moved by more than 0.18 log2
    # with 4, against up to 2 without.
    protect_log2: float = 0.0
    # successive_halving and hyperband: first rung (epochs) and the reduction factor.
    min_resource: int = 1
    reduction_factor: int = 3

    def __post_init__(self) -> None:
        _require(self.n_startup_trials >= 0, "n_startup_trials", "must be non-negative")
        _require(self.n_warmup_steps >= 0, "n_warmup_steps", "must be non-negative")
        _require(self.min_resource >= 1, "min_resource", "must be a positive integer")
        _require(self.reduction_factor >= 2, "reduction_factor", "must be at least 2")
        _require(0 < self.percentile < 100, "percentile", "must be in (0, 100)")
        _require(
            self.protect_log2 >= 0 and math.isfinite(self.protect_log2),
            "protect_log2",
            "must be a non-negative number (log2 units of lr; 0 turns it off)",
        )
        _require(
            self.protect_log2 == 0 or self.per_width,
            "protect_log2",
            "needs per_width = true (a trial is protected near its own width's best)",
        )


@dataclass(frozen=True)
class SamplerConfig:
    # Width is chosen so that every width gets an equal share of trials; this picks the lr
    # within a width: tpe (conditioned on that width's trials only) or random (log-uniform).
    name: Literal["tpe", "random"] = "tpe"
    # Random lrs per width before TPE starts modelling that width.
    n_startup_trials: int = 8

    def __post_init__(self) -> None:
        _require(self.n_startup_trials >= 0, "n_startup_trials", "must be non-negative")


@dataclass(frozen=True)
class Space:
    name: str
    model: ModelConfig
    lr: LRConfig
    description: str = ""
    # Fixes the data split, every trial's initialization and batch order, and the sampler.
    seed: int = 0
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        _require(bool(self.name.strip()), "name", "must not be empty")
        _require_int(self.seed, 0, 2**63 - 1, "seed")
        _require(
            self.model.family != "cnn" or self.dataset.name == "digits",
            "model.family",
            "'cnn' needs image data: set dataset.name = 'digits'",
        )

    def to_dict(self) -> dict[str, Any]:
        """The full space with defaults filled in: what a study stores and compares."""
        d = _jsonable(dataclasses.asdict(self))
        # Added after studies were stored: left out at its default, so that their spaces (and
        # fingerprints) still compare equal and they resume.
        for section, key, default in (
            ("pruner", "percentile", 50.0),
            ("pruner", "protect_log2", 0.0),
            ("training", "matmul_precision", "highest"),
            ("training", "patience", 0),
        ):
            if d[section][key] == default:
                del d[section][key]
        return d

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the space, without its name and description."""
        body = {k: v for k, v in self.to_dict().items() if k not in _NOT_COMPARED}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# Fields that do not change what a trial computes, so a study may be resumed across them.
_NOT_COMPARED = ("name", "description")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def space_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two space dicts (``name``/``description`` skipped).

    Returns:
        Sorted keys such as ``["lr.high", "model.widths"]``; empty when the spaces agree.
    """
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if not prefix and key in _NOT_COMPARED:
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
        return _build(Space, table, "")
    except _FieldError as e:
        raise SpaceError(f"{shown}: {e.key}: {e.message}") from None


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
