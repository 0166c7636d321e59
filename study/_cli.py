"""What the four commands share: their parser, with every flag's default in its help, one
program name in the usage line, ``--version``, and URLs masked in argparse's own errors."""

from __future__ import annotations

import argparse
import os
import sys

from study._version import tool_version
from study.urls import MaskingArgumentParser

__all__ = ["command_parser"]

# The console script ``width-lr-study`` runs ``python -m study.run``.
_SCRIPTS = {"study.run": "width-lr-study"}


class _DefaultsShown(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help, unless the help already says its default or
    the flag is a switch (off by default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
            or isinstance(action, argparse._VersionAction | argparse._HelpAction)
        ):
            return text
        return f"{text} (default: {action.default})"


def command_parser(module: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``python -m MODULE`` (named as the user ran it: the console script's name
    when run as one), with ``--version``."""
    prog = f"python -m {module}"
    if os.path.basename(sys.argv[0]) == _SCRIPTS.get(module):
        prog = _SCRIPTS[module]
    p = MaskingArgumentParser(prog=prog, description=description, formatter_class=_DefaultsShown)
    p.add_argument("--version", action="version", version=f"%(prog)s {tool_version()}")
    return p
