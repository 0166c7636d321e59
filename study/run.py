"""Run a width x learning-rate study: ``python -m study.run --trials 200``.

``--trials`` is the total the study should hold (COMPLETE + PRUNED), not how many more to run:
the same command after a Ctrl-C or a crash continues where the study stopped. Trials left RUNNING
by a killed process are failed by the heartbeat and retried.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence

from study._cli import command_parser
from study._errors import UserError
from study.api import DEFAULT_SPACE, run_study
from study.builders import CPU_STACK_MAX_WIDTH, MAX_DEFAULT_WORKERS
from study.storage import DEFAULT_STORAGE
from study.urls import mask_argv

__all__ = ["cli", "main"]


def _parser() -> argparse.ArgumentParser:
    p = command_parser("study.run", "Run (or resume) a width x learning-rate study.")
    p.add_argument(
        "--space",
        default=None,
        help=f"shipped space name or .toml path (default: the study's own space when the study "
        f"exists, else {DEFAULT_SPACE})",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=200,
        help="total trials the study should hold (with --until-ci: at most)",
    )
    p.add_argument(
        "--until-ci",
        type=float,
        default=None,
        metavar="W",
        help="stop as soon as alpha's 95%% interval is at most W wide and every width has an "
        "estimate inside its lr range, e.g. 0.3 (default: run all --trials)",
    )
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the storage")
    p.add_argument("--study-name", default=None, help="the study's name (default: the space's)")
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where trials train; auto: a GPU when there is one",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="trial processes on this machine, all on the same storage (default: one per core "
        f"on CPU, at most {MAX_DEFAULT_WORKERS}; one on a GPU). --workers 1 replays a seeded "
        "study exactly",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per process on CPU (1 is fastest)"
    )
    p.add_argument(
        "--stack",
        type=int,
        default=8,
        help="train up to this many trials of one width at once as a stacked model (1: off)",
    )
    p.add_argument(
        "--stack-max-width",
        type=int,
        default=None,
        help=f"stack only widths up to this (default for the MLP: {CPU_STACK_MAX_WIDTH} on CPU, "
        "where stacking wins on one thread, every width on a GPU; for other models 0: measure "
        "yours with scripts/stack_probe.py)",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        help="seconds between heartbeats; a trial silent for 3x this is failed and retried",
    )
    p.add_argument(
        "--report-dir",
        default=None,
        help="where the report goes at the end (default: reports/STUDY_NAME, the name made a "
        "safe folder name)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the report at the end")
    p.add_argument(
        "--twin",
        action="store_true",
        help="then run the same space under the other parametrization (SP <-> muP) on the "
        "same storage, and report both side by side",
    )
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line, callable from tests and notebooks. Returns the exit status: 0 done,
    2 bad input (one line on stderr), 130 interrupted, 1 a worker died short of the target."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.twin:
            from study.twin import run_twin

            first, second = run_twin(**_run_args(args, argv))
            return first.status if second is None else second.status
        result = run_study(
            space=args.space,
            trials=args.trials,
            until_ci=args.until_ci,
            storage=args.storage,
            study_name=args.study_name,
            device=args.device,
            workers=args.workers,
            threads=args.threads,
            stack=args.stack,
            stack_max_width=args.stack_max_width,
            heartbeat_s=args.heartbeat,
            report=not args.no_report,
            report_dir=args.report_dir,
            quiet=args.quiet,
            command=argv,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return result.status


def _run_args(args: argparse.Namespace, argv: list[str]) -> dict[str, object]:
    return dict(
        space=args.space,
        trials=args.trials,
        until_ci=args.until_ci,
        storage=args.storage,
        study_name=args.study_name,
        device=args.device,
        workers=args.workers,
        threads=args.threads,
        stack=args.stack,
        stack_max_width=args.stack_max_width,
        heartbeat_s=args.heartbeat,
        report=not args.no_report,
        report_dir=args.report_dir,
        quiet=args.quiet,
        command=argv,
        resume_command=["python", "-m", "study.run", *mask_argv(argv)],
    )


def cli() -> None:
    status = main()
    # Python's last garbage collection walks torch's objects (0.4 s of every run's exit);
    # frozen objects are skipped. The storage is closed and the output written by now.
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
