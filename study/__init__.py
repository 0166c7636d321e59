"""How does layer width change the optimal learning rate? A reproducible Optuna + PyTorch study."""

from __future__ import annotations

from study._errors import SpaceError, UserError
from study.space import Space, available_spaces, load_space


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """``run_study``, ``RunResult`` and ``make_report`` are imported when first asked for: they
    bring torch and Optuna, which ``load_space`` does not need."""
    if name in ("run_study", "RunResult"):
        from study import api

        return getattr(api, name)
    if name == "make_report":
        from study.report import make_report

        return make_report
    raise AttributeError(f"module 'study' has no attribute {name!r}")


__all__ = [
    "RunResult",
    "Space",
    "SpaceError",
    "UserError",
    "available_spaces",
    "load_space",
    "make_report",
    "run_study",
]
