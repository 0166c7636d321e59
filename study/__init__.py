"""How does layer width change the optimal learning rate? A reproducible Optuna + PyTorch study."""

from __future__ import annotations

from study._errors import SpaceError, UserError
from study.space import Space, available_spaces, load_space

__all__ = ["Space", "SpaceError", "UserError", "available_spaces", "load_space"]
