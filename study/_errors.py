"""Errors a user can cause: each ends the command with one line and exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the input (a space file, a storage URL, a study name), not a bug.

    The command line prints ``error: <message>`` on one line, exits with status 2 and shows no
    traceback. The message names the file or the option, the field, and what is allowed.
    """


class SpaceError(UserError):
    """A search space file that cannot be used."""
