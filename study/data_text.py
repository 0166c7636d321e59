"""Text for the ``gpt`` family: characters in, the next character out.

``dataset.name = "python_stdlib"`` reads the source files of a fixed list of the Python standard
library's modules from the running interpreter (no download; another Python version has other
sources, so the text's sha256 is stored with the study and a resume on other text is refused),
and keeps the first ``dataset.n_chars`` characters. ``dataset.path = "file.txt"`` reads any UTF-8
text file instead. The vocabulary is the text's characters; the last ``val_fraction`` of the
text (by position, not at random: neighbouring windows would leak) is the validation set. Each
example is a window of ``dataset.context`` characters and the same window shifted by one;
windows do not overlap. The validation loss is in nats per character.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from study._errors import UserError
from study.space_config import DatasetConfig

__all__ = ["STDLIB_MODULES", "text_arrays"]

# The corpus, in this order: modules whose sources are plain Python in every CPython 3.11+.
STDLIB_MODULES = (
    "argparse",
    "dataclasses",
    "functools",
    "textwrap",
    "shlex",
    "statistics",
    "fractions",
    "heapq",
    "calendar",
    "csv",
    "string",
    "difflib",
    "inspect",
    "typing",
)


def _stdlib_text() -> str:
    parts = []
    for name in STDLIB_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise UserError(f"dataset.name = 'python_stdlib': this Python has no source of {name}")
        parts.append(Path(spec.origin).read_text(encoding="utf-8"))
    return "\n".join(parts)


def _file_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"dataset.path = {path}: no such file")
    data = path.read_bytes()
    if b"\x00" in data:
        raise UserError(f"dataset.path = {path}: a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"dataset.path = {path}: not UTF-8 text ({e})") from None


@functools.lru_cache(maxsize=4)
def _read(cfg: DatasetConfig, stamp: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int, str]:
    if cfg.path is not None:
        text = _file_text(Path(cfg.path))
        where = f"dataset.path = {Path(cfg.path).name}"
    else:
        text = _stdlib_text()[: cfg.n_chars]
        where = "dataset.name = 'python_stdlib'"
    if not text.strip():
        raise UserError(f"{where}: the text is empty")
    vocab = sorted(set(text))
    lookup = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((lookup[c] for c in text), dtype=np.int64, count=len(text))
    n_val = round(cfg.val_fraction * len(ids))
    train, val = ids[: len(ids) - n_val], ids[len(ids) - n_val :]
    need = 2 * (cfg.context + 1)
    if min(len(train), len(val)) < need:
        raise UserError(
            f"{where}: {len(ids):,} characters leave {len(train):,} for training and "
            f"{len(val):,} for validation; each needs at least {need:,} (two windows of "
            f"dataset.context = {cfg.context} characters and the next one)"
        )
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return train, val, len(vocab), digest


def _windows(ids: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    n = (len(ids) - 1) // context
    x = ids[: n * context].reshape(n, context)
    y = ids[1 : n * context + 1].reshape(n, context)
    return x, y


def text_arrays(cfg: DatasetConfig) -> tuple[np.ndarray, ...]:
    """x_train, y_train, x_val, y_val (windows of character ids), the vocabulary's size and
    the text's sha256.

    Raises:
        UserError: no text, a binary or non-UTF-8 file, text too short for two windows on each
            side, or text other than the study's (its sha256 differs from the stored one).
    """
    stamp = (0, 0)
    if cfg.path is not None:
        try:
            st = Path(cfg.path).stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            pass
    train, val, vocab, digest = _read(cfg, stamp)
    if cfg.sha256 is not None and digest != cfg.sha256:
        raise UserError(
            f"the text changed since the study was made (sha256 {cfg.sha256[:12]}..., now "
            f"{digest[:12]}...; another Python's standard library?): run it where it was made, "
            "or start a new study (--study-name)"
        )
    x_tr, y_tr = _windows(train, cfg.context)
    x_va, y_va = _windows(val, cfg.context)
    return x_tr, y_tr, x_va, y_va, vocab, digest
