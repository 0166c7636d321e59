"""Browse a study live: ``python -m study.dashboard [--storage URL] [--port 8080]``.

Starts the real ``optuna-dashboard`` process on the storage, on 127.0.0.1 by default. Binding to
any other address exposes every study in the storage to the network: it needs ``--allow-remote``
and prints a warning. A missing SQLite file is refused (optuna-dashboard would create an empty
one and exit).
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import optuna

from study._cli import command_parser
from study._errors import UserError
from study.storage import DEFAULT_STORAGE, open_storage
from study.urls import dashboard_url, mask_url, require_existing

__all__ = ["dashboard_command", "main", "save_to_dashboard", "study_addresses"]


def save_to_dashboard(study: optuna.Study, figures: dict[str, Any], note: str) -> None:
    """Save plotly ``figures`` (by id, in the order the dashboard shows them) and a Markdown
    ``note`` into ``study``, with optuna-dashboard's own ``save_plotly_graph_object`` and
    ``save_note``."""
    plot_data, notes = _saving_modules()
    for figure_id, figure in figures.items():
        plot_data.save_plotly_graph_object(study, figure, graph_object_id=figure_id)
    notes.save_note(study, note)


@functools.cache
def _saving_modules() -> tuple[ModuleType, ModuleType]:
    """optuna-dashboard's modules that save a figure and a note, without its package import.

    ``import optuna_dashboard`` imports its web app, and with it scikit-learn (for the app's
    importances): 1.2 s of a report's 6 here. The two functions live in modules of their own that
    import only optuna, so they are loaded from those files alone; where that fails (another
    layout of the package), from the package.
    """
    try:
        spec = importlib.util.find_spec("optuna_dashboard")  # finds it, does not import it
        assert spec is not None and spec.submodule_search_locations
        modules = []
        for name in ("_custom_plot_data", "_note"):
            path = Path(spec.submodule_search_locations[0]) / f"{name}.py"
            file_spec = importlib.util.spec_from_file_location(f"study._dashboard{name}", path)
            assert file_spec is not None and file_spec.loader is not None
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            modules.append(module)
        return modules[0], modules[1]
    except Exception:  # any failure: the package's own import
        import optuna_dashboard

        return optuna_dashboard, optuna_dashboard


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


def study_addresses(storage: str, host: str, port: int) -> list[str]:
    """Each study of the storage with the address of its page in optuna-dashboard
    (``/dashboard/studies/ID``): ``  NAME  http://HOST:PORT/dashboard/studies/ID``."""
    rdb = open_storage(storage, heartbeat_s=None)
    try:
        names = optuna.get_all_study_names(storage=rdb)
        ids = {name: rdb.get_study_id_from_name(name) for name in names}
    finally:
        rdb.engine.dispose()
    width = max((len(n) for n in names), default=0)
    return [f"  {n:<{width}}  http://{host}:{port}/dashboard/studies/{i}" for n, i in ids.items()]


def main(argv: Sequence[str] | None = None) -> int:
    p = command_parser("study.dashboard", "Browse a study live in the real optuna-dashboard.")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the storage")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on")
    p.add_argument("--port", type=int, default=8080, help="port to serve on")
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
    print(f"optuna-dashboard on http://{args.host}:{args.port} for {mask_url(args.storage)}")
    for line in study_addresses(args.storage, args.host, args.port):
        print(line)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)  # the real optuna-dashboard process replaces this one


if __name__ == "__main__":
    sys.exit(main())
