"""Browse a study live: ``python -m study.dashboard [--storage URL] [--port 8080]``.

Starts the real ``optuna-dashboard`` process on the storage, on 127.0.0.1 by default. Binding to
any other address exposes every study in the storage to the network: it needs ``--allow-remote``
and prints a warning. A missing SQLite file is refused (optuna-dashboard would create an empty
one and exit).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from study._errors import UserError
from study.storage import DEFAULT_STORAGE, dashboard_url, mask_url, require_existing

__all__ = ["dashboard_command", "main"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_command(storage: str, host: str, port: int, allow_remote: bool) -> list[str]:
    """The optuna-dashboard command line for ``storage``, after the checks.

    Raises:
        UserError: the SQLite file does not exist, or a non-loopback host without permission.
    """
    path = require_existing(storage)
    if not _is_loopback(host) and not allow_remote:
        raise UserError(
            f"--host {host} would serve the studies to the network; pass --allow-remote to do it"
        )
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}")
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which(
        "optuna-dashboard"
    )
    if exe is None:
        raise UserError("optuna-dashboard is not installed: pip install optuna-dashboard")
    url = dashboard_url(storage) if path is not None else storage
    return [exe, url, "--host", host, "--port", str(port)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m study.dashboard", description=__doc__.splitlines()[0]
    )
    p.add_argument("--storage", default=DEFAULT_STORAGE)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (anyone who reaches it sees the studies)",
    )
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        cmd = dashboard_command(args.storage, args.host, args.port, args.allow_remote)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(
            f"warning: serving {mask_url(args.storage)} on {args.host}:{args.port}, "
            "reachable from the network, with no authentication",
            file=sys.stderr,
        )
    print(
        f"optuna-dashboard on http://{args.host}:{args.port} for {mask_url(args.storage)}",
        flush=True,
    )
    os.execv(cmd[0], cmd)  # the real optuna-dashboard process replaces this one


if __name__ == "__main__":
    sys.exit(main())
