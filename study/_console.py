"""What the user sees while a study runs: a progress line and the per-width summary table."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from optuna.trial import FrozenTrial, TrialState

from study.names import DIVERGED, LR, WIDTH, is_verification

__all__ = ["Counts", "Progress", "count_trials", "summary_table"]


@dataclass(frozen=True)
class Counts:
    complete: int
    pruned: int
    diverged: int  # a subset of pruned
    running: int
    waiting: int
    failed: int
    best: float | None

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def is_diverged(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get(DIVERGED, False))


def count_trials(trials: list[FrozenTrial]) -> Counts:
    by = {s: 0 for s in TrialState}
    trials = [t for t in trials if not is_verification(t)]  # study.predict's, not the study's
    for t in trials:
        by[t.state] += 1
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    return Counts(
        complete=by[TrialState.COMPLETE],
        pruned=by[TrialState.PRUNED],
        diverged=sum(1 for t in trials if t.state == TrialState.PRUNED and is_diverged(t)),
        running=by[TrialState.RUNNING],
        waiting=by[TrialState.WAITING],
        failed=by[TrialState.FAIL],
        best=min(values) if values else None,
    )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """One status line over the study's total: done/target, pruned, diverged, best, time left.

    On a terminal the line is redrawn in place; otherwise a line is printed at most every
    ``every_s`` seconds and at the end. ``quiet`` prints nothing.
    """

    def __init__(
        self, target: int, quiet: bool = False, stream: TextIO | None = None, every_s: float = 10
    ) -> None:
        self.target = target
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self._start = time.monotonic()
        self._first_done: int | None = None
        self._last_print = -math.inf
        self.extra: Callable[[], str] | None = None  # e.g. the live answer (study.live)

    def update(self, counts: Counts, final: bool = False) -> None:
        more = self.extra() if self.extra is not None else ""  # read even when quiet
        if self.quiet:
            return
        now = time.monotonic()
        if self._first_done is None:
            self._first_done = counts.finished
        done_here = counts.finished - self._first_done
        elapsed = now - self._start
        left = "?"
        if counts.finished >= self.target:
            left = _duration(0)
        elif done_here > 0:
            left = _duration(elapsed / done_here * max(self.target - counts.finished, 0))
        best = f"{counts.best:.4f}" if counts.best is not None else "-"
        width = 24
        filled = min(width, int(width * counts.finished / max(self.target, 1)))
        bar = "#" * filled + "." * (width - filled)
        line = (
            f"[{bar}] {counts.finished}/{self.target} trials | pruned {counts.pruned} "
            f"(diverged {counts.diverged}) | best {best} | {_duration(elapsed)} elapsed, "
            f"{left} left"
        )
        if more:
            line += f" | {more}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
            self.stream.flush()
        elif final or now - self._last_print >= self.every_s:
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_print = now


def summary_table(trials: list[FrozenTrial], widths: list[int]) -> str:
    """Per width: trials, pruned, diverged, best lr and best value (COMPLETE trials only)."""
    rows = [("width", "trials", "complete", "pruned", "diverged", "best lr", "best value")]
    for w in widths:
        mine = [t for t in trials if t.params.get(WIDTH) == w and t.state.is_finished()]
        mine = [t for t in mine if t.state != TrialState.FAIL]
        done = [t for t in mine if t.state == TrialState.COMPLETE and t.value is not None]
        pruned = [t for t in mine if t.state == TrialState.PRUNED]
        best = min(done, key=lambda t: t.value) if done else None  # type: ignore[arg-type,return-value]
        rows.append(
            (
                str(w),
                str(len(mine)),
                str(len(done)),
                str(len(pruned)),
                str(sum(1 for t in pruned if is_diverged(t))),
                f"{best.params[LR]:.3g}" if best else "-",
                f"{best.value:.4f}" if best else "-",
            )
        )
    widths_col = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(widths_col[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(lines)
