"""A search space's typed, validated config: what one study needs, section by section.

Each section is a frozen dataclass whose ``__post_init__`` checks its values; a mistake raises
``_FieldError`` naming the key, which :mod:`study.space` turns into one line naming the file too.
The comment above each field says why its default is what it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

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
    name: Literal["digits", "teacher_student", "python_stdlib"] = "digits"
    # A quarter of the data for validation: ~450 digits, enough to rank learning rates.
    val_fraction: float = 0.25
    # teacher_student only: samples, input features, classes, teacher hidden width, and the
    # fraction of labels replaced by random ones (0 = a perfectly learnable task).
    n_samples: int = 4000
    n_features: int = 32
    n_classes: int = 10
    teacher_width: int = 64
    label_noise: float = 0.0
    # Your own data (name is then ignored): a CSV file (``target`` names the label column, every
    # other column is a feature) or an .npz (arrays X, y, optionally X_val, y_val), its path
    # relative to the space file; or ``factory = "module:function"`` returning (X, y) or
    # (X, y, X_val, y_val). A study stores the data's sha256 and its shape (n_samples,
    # n_features, n_classes: the outputs for mse), and refuses to resume on changed data.
    path: str | None = None
    target: str | None = None
    factory: str | None = None
    factory_dir: str | None = None  # where factory's module is found: the space file's folder
    sha256: str | None = None
    # Text (the gpt family): python_stdlib is the first n_chars characters of a fixed list of
    # the standard library's sources; a path ending in .txt is any UTF-8 text. Examples are
    # windows of ``context`` characters.
    context: int = 64
    n_chars: int = 200_000

    @property
    def is_text(self) -> bool:
        """Characters for a language model, not rows of features."""
        return self.name == "python_stdlib" or (
            self.path is not None and self.path.lower().endswith(".txt")
        )

    @property
    def is_users(self) -> bool:
        """Data from the user's file or code, not a built-in dataset."""
        return self.path is not None or self.factory is not None

    def __post_init__(self) -> None:
        _require(0 < self.val_fraction < 1, "val_fraction", "must be between 0 and 1 exclusive")
        _require_int(self.n_samples, 4 if self.is_users else 20, MAX_SAMPLES, "n_samples")
        _require_int(self.n_features, 1, MAX_WIDTH, "n_features")
        _require(
            self.path is None or self.factory is None,
            "factory",
            "set either dataset.path or dataset.factory, not both",
        )
        _require_int(self.n_classes, 1 if self.is_users else 2, MAX_WIDTH, "n_classes")
        _require_int(self.teacher_width, 1, MAX_WIDTH, "teacher_width")
        _require_int(self.context, 1, 65_536, "context")
        _require_int(self.n_chars, 100, MAX_SAMPLES, "n_chars")
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
        if self.name == "digits" and not self.is_users:
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
    family: Literal["mlp", "cnn", "gpt"] = "mlp"
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
    # Your own model: "module:function", a function(width) -> torch.nn.Module, the module found
    # beside the space file (``factory_dir``, filled in when the space is read), in the current
    # folder, or installed. family, depth and hidden_multipliers are then ignored.
    factory: str | None = None
    factory_dir: str | None = None
    # gpt: the size of an attention head; heads = width / head_size (every width a multiple).
    head_size: int = 16

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
        _require_int(self.head_size, 1, MAX_WIDTH, "head_size")
        if self.family == "gpt":
            odd = [w for w in self.widths if w % self.head_size]
            _require(
                not odd,
                "widths",
                f"must be multiples of model.head_size = {self.head_size} for the gpt family "
                f"(the heads are width / head_size), got {odd}",
            )

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
    # warmup_cosine: the lr rises linearly over the first ``warmup`` fraction of the steps, then
    # falls to zero on a cosine, step by step (as the field trains transformers).
    schedule: Literal["none", "cosine", "plateau", "warmup_cosine"] = "none"
    warmup: float = 0.1
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
    # cross_entropy: class labels, the model's outputs are logits. mse: numeric targets, one
    # output per target column (class labels become one-hot targets).
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"

    def __post_init__(self) -> None:
        _require_int(self.epochs, 1, MAX_EPOCHS, "epochs")
        _require(self.patience >= 0, "patience", "must be a non-negative integer (0: off)")
        _require_int(self.batch_size, 1, MAX_SAMPLES, "batch_size")
        _require(0 < self.plateau_factor < 1, "plateau_factor", "must be between 0 and 1")
        _require(self.plateau_patience >= 0, "plateau_patience", "must be non-negative")
        _require(self.divergence_factor > 1, "divergence_factor", "must be greater than 1")
        _require(0 <= self.warmup < 1, "warmup", "must be from 0 to below 1")


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
            (self.model.family == "gpt") == self.dataset.is_text or self.model.factory is not None,
            "model.family",
            "'gpt' goes with text (dataset.name = 'python_stdlib', or a dataset.path ending in "
            ".txt), and text with 'gpt'",
        )
        _require(
            self.model.family != "cnn"
            or self.model.factory is not None
            or (self.dataset.name == "digits" and not self.dataset.is_users),
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
            ("training", "loss", "cross_entropy"),
            ("model", "factory", None),
            ("model", "factory_dir", None),
            ("dataset", "path", None),
            ("dataset", "target", None),
            ("dataset", "factory", None),
            ("dataset", "factory_dir", None),
            ("dataset", "sha256", None),
            ("dataset", "context", 64),
            ("dataset", "n_chars", 200_000),
            ("model", "head_size", 16),
            ("training", "warmup", 0.1),
        ):
            if d[section][key] == default:
                del d[section][key]
        return d

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the space, without its name and description."""
        body = {k: v for k, v in self.to_dict().items() if k not in _NOT_COMPARED}
        for section, key in (
            ("model", "factory_dir"),
            ("dataset", "path"),
            ("dataset", "factory_dir"),
        ):
            body.get(section, {}).pop(key, None)  # where it was found (space.WHERE_KEYS)
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
