"""Storage URLs: their secrets masked wherever they are printed or stored, and what a URL
names (a SQLite file, or a server).

A password can sit in a URL's userinfo (``user:pw@``) or in its query (``?password=``,
``sslpassword=``, a whole DSN); the flag before it can be spelled ``--storage URL``,
``--storage=URL`` or abbreviated (``--stor``). Every form is masked (``***``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote, unquote_plus

import sqlalchemy

from study._errors import UserError

__all__ = [
    "MaskingArgumentParser",
    "dashboard_url",
    "mask_argv",
    "mask_secrets",
    "mask_text",
    "mask_url",
    "require_existing",
    "sqlite_path",
]


# A query parameter whose key (percent-decoded, any case) holds one of these is a secret; so is
# one whose decoded value holds "KEY=" or "KEY:" with such a key (a whole DSN in one parameter).
_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
_SECRET_PAIR = re.compile(r"(?:pass|pwd|secret|token)[^=:&;\s]*\s*[=:]", re.IGNORECASE)
# scheme://user:PASSWORD@ (the colon may be written %3A, the // left out). The password runs to
# the *last* "@": an unescaped "@", "/" or "?" in it makes SQLAlchemy send part of it as the host.
_USERINFO = re.compile(
    r"^(?P<head>[^:/?#@\s]*:(?://)?(?:[^:/?#@%]|%(?!3[aA]))*(?::|%3[aA]))(?P<password>.*)@",
    re.DOTALL,
)
_PARAM_SEPARATORS = re.compile(r"([&;\s]+)")


def _url_pieces(url: str) -> list[tuple[str, bool]]:
    """``url`` cut into pieces that join back to it, each marked True where it is a secret."""
    pieces: list[tuple[str, bool]] = []
    pos = 0
    if m := _USERINFO.match(url):
        pieces += [(m["head"], False), (m["password"], True)]
        pos = m.end("password")
    q = url.find("?", pos)
    if "://" not in url:  # not a URL: key=value pairs (a DSN), if anything
        params_at = pos
    else:
        params_at = len(url) if q < 0 else q + 1
    pieces.append((url[pos:params_at], False))
    for part in _PARAM_SEPARATORS.split(url[params_at:]):
        key, eq, value = part.partition("=")
        if eq and (
            _SECRET_KEY.search(unquote_plus(key)) or _SECRET_PAIR.search(unquote_plus(value))
        ):
            pieces += [(key + eq, False), (value, True)]
        else:
            pieces.append((part, False))
    return pieces


def mask_url(url: str) -> str:
    """The URL with every secret in it replaced by ``***``: safe to print or store.

    Masks the password of ``user:password@`` (the colon may be written ``%3A``) and the value of
    every query parameter whose key, percent-decoded and in any case, holds ``pass``, ``pwd``,
    ``secret`` or ``token`` (``password=``, ``sslpassword=``, ``%70asswd=``, ...), or whose
    decoded value holds such a ``key=``. Needs no parse: a URL SQLAlchemy refuses is masked too,
    and so is ``--storage=URL`` whole (the flag is kept). Text without ``://`` is read as
    ``key=value`` pairs. Everything else is kept as written.
    """
    return "".join("***" if secret else piece for piece, secret in _url_pieces(url))


def mask_argv(argv: Sequence[str]) -> list[str]:
    """Command-line arguments with every secret masked (:func:`mask_url` of each): however the
    flag before a URL is spelled (``--storage URL``, ``--storage=URL``, ``--stor=URL``,
    ``--compare-storage URL``)."""
    return [mask_url(a) for a in argv]


def mask_text(text: str) -> str:
    """Free text (a stored command line, an argparse message) with the secrets of every URL in
    it masked: :func:`mask_url` of each whitespace-separated word."""
    return "".join(mask_url(word) for word in re.split(r"(\s+)", text))


def mask_secrets(text: str, url: str) -> str:
    """``text`` (a driver's error message) with each secret of ``url`` replaced by ``***``, as
    written in the URL and percent-decoded, and the secrets of any URL in it masked."""
    secrets = {piece for piece, secret in _url_pieces(url) if secret and piece}
    forms = {f for s in secrets for f in (s, unquote(s), unquote_plus(s)) if f}
    for form in sorted(forms, key=len, reverse=True):
        text = text.replace(form, "***")
    return mask_text(text)


class MaskingArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose error messages mask URLs: argparse echoes a mistyped or
    ambiguous ``--st=URL`` whole ("ambiguous option: --st=postgresql://u:pw@...")."""

    def error(self, message: str) -> NoReturn:
        super().error(mask_text(message))


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other backends or in-memory SQLite."""
    u = sqlalchemy.engine.make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database)


def require_existing(url: str) -> Path | None:
    """For readers (report, dashboard): the URL parses and a SQLite file already exists.

    Returns:
        The SQLite file, or None for other backends.

    Raises:
        UserError: the URL does not parse, or its SQLite file is missing (a reader must not
            create an empty database).
    """
    try:
        path = sqlite_path(url)
    except Exception:
        raise UserError(f"storage URL {mask_url(url)!r} does not parse") from None
    if path is not None and not path.is_file():
        raise UserError(f"storage {mask_url(url)}: no such database file {path}")
    return path


def dashboard_url(url: str) -> str:
    """The URL to give ``optuna-dashboard``: absolute for SQLite, masked for servers."""
    path = sqlite_path(url)
    return f"sqlite:///{path.resolve()}" if path is not None else mask_url(url)
