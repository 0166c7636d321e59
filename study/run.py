"""Run a width x learning-rate study: ``python -m study.run --trials 200``.

``--trials`` is the total the study should hold (COMPLETE + PRUNED), not how many more to run:
the same command after a Ctrl-C or a crash continues where the study stopped. Trials left RUNNING
by a killed process are failed by the heartbeat and retried.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch

from study._console import Progress, count_trials, summary_table
from study._errors import UserError, is_storage_full
from study.cost import check_memory
from study.objective import Objective
from study.runner import (
    CPU_STACK_MAX_WIDTH,
    WorkerConfig,
    fail_stale,
    quiet_sqlalchemy_log,
    quiet_storage_full_threads,
    run_trials,
    run_workers,
    start_method,
)
from study.sampling import PerWidthPruner, WidthStratifiedSampler
from study.space import Space, load_space, space_diff, space_from_dict, space_source
from study.storage import (
    DEFAULT_STORAGE,
    MaskingArgumentParser,
    count_stored_trials,
    create_or_load_study,
    dashboard_url,
    mask_argv,
    mask_url,
    open_storage,
    stored_space,
)
from study.train import matmul_arithmetic

__all__ = ["build_pruner", "build_sampler", "cli", "main"]

# The space of a new study when --space is not given.
DEFAULT_SPACE = "mlp_digits"


def build_sampler(space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """Width round-robin by count; lr by TPE (or random) on that width's trials only."""
    if space.sampler.name == "tpe":
        lr_sampler: optuna.samplers.BaseSampler = optuna.samplers.TPESampler(
            n_startup_trials=space.sampler.n_startup_trials,
            multivariate=False,
            constant_liar=True,
            seed=seed,
        )
    else:
        lr_sampler = optuna.samplers.RandomSampler(seed=seed)
    return WidthStratifiedSampler(space.model.widths, lr_sampler)


def build_pruner(space: Space) -> optuna.pruners.BasePruner:
    p = space.pruner
    pruner: optuna.pruners.BasePruner
    if p.name == "none":
        return optuna.pruners.NopPruner()
    if p.name == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    elif p.name == "percentile":
        pruner = optuna.pruners.PercentilePruner(
            p.percentile, n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps
        )
    elif p.name == "successive_halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    else:
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=space.training.epochs,
            reduction_factor=p.reduction_factor,
        )
    return PerWidthPruner(pruner, protect_log2=p.protect_log2) if p.per_width else pruner


def run_seed(space: Space, n_existing: int, worker: int = 0) -> int:
    """The sampler's seed for a run (or worker) that starts with ``n_existing`` trials stored.

    A seeded sampler replays the same parameters after a resume (optuna#3255); mixing in the
    number of trials already stored keeps a fresh study reproducible and a resumed one new, and
    the worker index keeps parallel workers from proposing the same lrs.
    """
    digest = hashlib.sha256(f"{space.seed}:{n_existing}:{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def default_stack_max_width(device: torch.device, widths: Sequence[int]) -> int:
    """The widest width stacked when ``--stack-max-width`` is not given."""
    return CPU_STACK_MAX_WIDTH if device.type == "cpu" else max(widths)


# The most trial processes the default starts: the most one SQLite file was tested with (4
# workers, no "database is locked"). More can be asked for with --workers (PostgreSQL for many).
MAX_DEFAULT_WORKERS = 4


def default_workers(device: torch.device, threads: int, remaining: int) -> int:
    """How many trial processes a run starts when ``--workers`` is not given.

    On CPU, one per ``threads`` cores this process may use (at most ``MAX_DEFAULT_WORKERS``,
    never more than the ``remaining`` trials); on a GPU one, whose stacked trials fill it.
    """
    if device.type != "cpu":
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores // threads, MAX_DEFAULT_WORKERS, remaining))


def _precision_note(precision: str, device: torch.device) -> str:
    """What the run line adds for a space that lowers the matmul precision, e.g.
    ``, matmuls in bf16 (matmul_precision medium)``; nothing for "highest"."""
    if precision == "highest":
        return ""
    return f", matmuls in {matmul_arithmetic(precision, device)} (matmul_precision {precision})"


def _git_commit() -> str | None:
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


def _metadata(space: Space, argv: Sequence[str]) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "command": shlex.join(["python", "-m", "study.run", *mask_argv(argv)]),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "width-lr-study": version("width-lr-study"),
        },
        "git_commit": _git_commit(),
        "seed": space.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _parser() -> argparse.ArgumentParser:
    p = MaskingArgumentParser(
        prog="python -m study.run",
        description="Run (or resume) a width x learning-rate study.",
    )
    p.add_argument(
        "--space",
        default=None,
        help=f"shipped space name or .toml path (default: the study's own space when the study "
        f"exists, else {DEFAULT_SPACE})",
    )
    p.add_argument(
        "--trials", type=int, default=200, help="total trials the study should hold (default 200)"
    )
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="SQLAlchemy URL of the storage")
    p.add_argument("--study-name", default=None, help="default: the space's name")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
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
        help=f"stack only widths up to this (default: {CPU_STACK_MAX_WIDTH} on CPU, where "
        "stacking wins on one "
        "thread; every width on a GPU, which stacked trials fill)",
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
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line, callable from tests and notebooks. Returns the exit status.

    The storage's connections are closed on return: left to the garbage collector, their close
    (and with it SQLite's checkpoint of the WAL into the file) would come at a random later time.
    """
    opened: list[optuna.storages.RDBStorage] = []
    try:
        return _main(argv, opened)
    finally:
        for storage in opened:
            storage.engine.dispose()


def _main(argv: Sequence[str] | None, opened: list[optuna.storages.RDBStorage]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    # Optuna logs every trial (and a traceback for an interrupted one); the progress line and
    # the summary say what matters. Bugs still raise with their traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet_sqlalchemy_log()
    quiet_storage_full_threads()
    try:
        if args.trials < 1:
            raise UserError(f"--trials must be a positive integer, got {args.trials}")
        if args.workers is not None and args.workers < 1:
            raise UserError(f"--workers must be a positive integer, got {args.workers}")
        if args.stack < 1:
            raise UserError(f"--stack must be a positive integer, got {args.stack}")
        if args.threads < 1:
            raise UserError(f"--threads must be a positive integer, got {args.threads}")
        if args.heartbeat < 1:
            raise UserError(f"--heartbeat must be a positive integer, got {args.heartbeat}")
        if args.study_name is not None and not args.study_name.strip():
            raise UserError("--study-name must not be empty (leave it out for the space's name)")
        space = load_space(args.space or DEFAULT_SPACE)
        device = resolve_device(args.device)
        # Before anything is stored: the widest trial fits in the device's memory.
        check_memory(space, device, source=space_source(args.space or DEFAULT_SPACE))
        study_name = args.study_name or space.name
        storage = open_storage(args.storage, heartbeat_s=args.heartbeat)
        opened.append(storage)
        # Without --space an existing study runs on the space it stored, so the same command
        # resumes it after the shipped space changed (a new version of the tool).
        stored = None if args.space else stored_space(storage, study_name)
        differ: list[str] = []  # how the shipped space of the same name has changed since
        if stored is not None:
            if stored.get("name") == space.name:
                differ = space_diff(stored, space.to_dict())
            space = space_from_dict(stored)
            check_memory(space, device, source="the study's stored space")
        n_existing = _count_existing(storage, study_name)
        study, created = create_or_load_study(
            storage,
            study_name,
            space,
            build_sampler(space, run_seed(space, n_existing)),
            build_pruner(space),
            _metadata(space, argv),
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    stack_max_width = args.stack_max_width
    if stack_max_width is None:
        stack_max_width = default_stack_max_width(device, space.model.widths)
    finished = count_trials(study.get_trials(deepcopy=False)).finished
    workers = args.workers
    if workers is None:
        workers = default_workers(device, args.threads, args.trials - finished)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    shown = mask_url(args.storage)
    resume = ["python", "-m", "study.run", "--trials", str(args.trials)]
    if args.space:
        resume[3:3] = ["--space", args.space]
    if args.storage != DEFAULT_STORAGE:
        resume += ["--storage", shown]
    if args.study_name:
        resume += ["--study-name", args.study_name]
    if args.workers is not None:
        resume += ["--workers", str(args.workers)]
    say(f"storage:   {shown}")
    say(f"study:     {study_name} ({'new' if created else 'resumed'}, target {args.trials} trials)")
    say(
        f"space:     {space.name} [{space.fingerprint()}] widths {list(space.model.widths)}, "
        f"lr {space.lr.low:g}..{space.lr.high:g}, {space.optimizer.name}, "
        f"{space.training.epochs} epochs"
        + (f" (patience {space.training.patience})" if space.training.patience else "")
        + f", device {device}"
        + _precision_note(space.training.matmul_precision, device)
    )
    if differ:
        say(
            f"           the study's own space; the shipped {DEFAULT_SPACE} differs in: "
            + ", ".join(differ)
        )
    say(f"dashboard: optuna-dashboard {dashboard_url(args.storage)}")
    say(f"resume:    {shlex.join(resume)}")

    progress = Progress(args.trials, quiet=args.quiet)
    status = 0
    try:
        if finished >= args.trials:  # the same command again after the study ended
            say(
                f"workers:   none: {finished} trials are finished, the target is {args.trials}"
                " (a larger --trials runs more)"
            )
            fail_stale(study)  # nothing to train, but a killed run's RUNNING trial is failed
        elif workers == 1:
            say("workers:   1 process")
            run_trials(
                study,
                Objective(space, device),
                args.trials,
                progress,
                stack=args.stack,
                stack_max_width=stack_max_width,
            )
        else:
            configs = [
                WorkerConfig(
                    space.to_dict(),
                    args.storage,
                    study_name,
                    args.trials,
                    args.device,
                    args.threads,
                    args.heartbeat,
                    worker=i,
                    stack=args.stack,
                    stack_max_width=stack_max_width,
                )
                for i in range(workers)
            ]
            # This process is worker 0 (its study carries worker 0's sampler seed).
            status = run_workers(
                configs, study, progress, say, Objective(space, device), start_method(device)
            )
    except KeyboardInterrupt:
        status = 130
    except Exception as e:
        if not is_storage_full(e):
            raise
        # The trials left RUNNING are failed and retried by the next run, as after a kill.
        print(
            f"error: storage {shown} is full (no space left on its disk); free some, then "
            f"resume: {shlex.join(resume)}",
            file=sys.stderr,
        )
        return 2
    if status == 130:
        say("\ninterrupted: the study is stored; run the resume command to continue")
    trials = study.get_trials(deepcopy=False)
    counts = count_trials(trials)
    progress.update(counts, final=True)
    if status == 1:
        reached = counts.finished >= args.trials
        say(f"a worker died; the others {'reached' if reached else 'did not reach'} the target")
        status = 0 if reached else 1
    say("")
    say(summary_table(trials, list(space.model.widths)))
    if status == 0 and not args.no_report:
        _report(study, args, study_name, say)
    return status


def _report(study: optuna.Study, args: argparse.Namespace, study_name: str, say: Any) -> None:
    """The headline at the end of a run, and the full report in ``--report-dir``."""
    from study.analysis import headline
    from study.report import default_report_dir, make_report

    out = Path(args.report_dir) if args.report_dir else default_report_dir(study_name)
    (rep,) = make_report(study, out, args.storage)
    say("")
    say(headline(rep.fit, study_name))
    if rep.fit.note:
        say(f"  note: {rep.fit.note}")
    say(f"report:    {out}/report.html (figures and the note are in the dashboard too)")


def _count_existing(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return count_stored_trials(storage, study_id)


def cli() -> None:
    status = main()
    # Python's last garbage collection walks torch's objects (0.4 s of every run's exit);
    # frozen objects are skipped. The storage is closed and the output written by now.
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    cli()
