"""Which version of the tool is running: its package version and, from a checkout, its git
commit (a study and a report record both)."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = ["git_commit", "tool_version"]


def tool_version() -> str:
    try:
        return version("width-lr-study")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def git_commit() -> str | None:
    """The tool's git commit, where it runs from a checkout; else None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None
