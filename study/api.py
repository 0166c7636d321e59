"""The Python API: run, resume and report a study from a notebook or a script.

``python -m study.run`` is a thin layer over :func:`run_study`; both give the same guarantees
(exact totals, resume, workers, kill-safety). For example::

    from study import load_space, make_report, run_study

    result = run_study("smoke", trials=24, storage="sqlite:///notebook.db")
    result.study.trials_dataframe()          # every trial, as Optuna stores it
    run_study("smoke", trials=48, storage="sqlite:///notebook.db")  # resumes: 24 more
"""

from __future__ import annotations

import dataclasses
import math
import platform
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch

from study._console import Progress, count_trials, summary_table
from study._errors import UserError, is_storage_full
from study._version import git_commit
from study.analysis import headline, in_plain_words
from study.builders import (
    build_pruner,
    build_sampler,
    default_stack_max_width,
    default_workers,
    resolve_device,
    run_seed,
)
from study.cost import check_memory
from study.live import MIN_COMPLETE_TO_STOP, LiveAnswer, look
from study.names import COMMAND
from study.objective import Objective
from study.report import StudyReport, default_report_dir, make_report
from study.runner import fail_stale, run_trials
from study.space import Space, load_space, space_diff, space_from_dict, space_source
from study.storage import (
    DEFAULT_STORAGE,
    count_stored_trials,
    create_or_load_study,
    open_storage,
    stored_space,
)
from study.train import matmul_arithmetic
from study.urls import dashboard_url, mask_argv, mask_url
from study.user_parts import prepare_space
from study.workers import (
    WorkerConfig,
    quiet_sqlalchemy_log,
    quiet_storage_full_threads,
    run_workers,
    start_method,
)

__all__ = ["DEFAULT_SPACE", "RunResult", "run_study"]

# The space of a new study when none is named.
DEFAULT_SPACE = "mlp_digits"


@dataclass
class RunResult:
    """What :func:`run_study` did."""

    study: optuna.Study
    created: bool  # the study was made by this run (False: resumed)
    # 0: the study holds its target; 130: interrupted (Ctrl-C), stored, resumable by running
    # again; 1: a worker died and the others did not reach the target.
    status: int
    report: StudyReport | None  # None with report=False, or when the run did not end at 0


def run_study(
    space: str | Space | None = None,
    trials: int = 200,
    until_ci: float | None = None,
    storage: str = DEFAULT_STORAGE,
    study_name: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    threads: int = 1,
    stack: int = 8,
    stack_max_width: int | None = None,
    heartbeat_s: int = 10,
    report: bool = True,
    report_dir: str | Path | None = None,
    quiet: bool = False,
    command: Sequence[str] | None = None,
    resume_command: Sequence[str] | None = None,
    live: bool | None = None,
) -> RunResult:
    """Run a study until it holds ``trials`` finished trials, or resume it to that total.

    Args:
        space: a shipped space's name, a ``.toml`` path, or a :class:`Space`; None: the study's
            own space when it exists (so the same call resumes it), else ``mlp_digits``.
        trials: the total of finished (complete + pruned) trials the study should hold.
        until_ci: stop before ``trials`` as soon as alpha's 95% interval is at most this wide
            and every width has an estimate inside its lr range (:mod:`study.live`).
        storage: any SQLAlchemy URL; a SQLite file is made if missing.
        study_name: default: the space's name.
        device: "auto" (a GPU when there is one), "cpu" or "cuda".
        workers: trial processes on this machine; default: one per core on CPU (at most 4),
            one on a GPU. 1 makes a fresh seeded study replay exactly.
        threads: torch threads per process on CPU.
        stack: trials of one width trained at once as one stacked model (1: off).
        stack_max_width: widest width stacked; default for the MLP: 256 on CPU, every width
            on a GPU; for other models 0 (study.builders.default_stack_max_width).
        heartbeat_s: seconds between a running trial's heartbeats; a trial silent for 3x this
            is failed and retried.
        report: write the report at the end (into ``report_dir``, default
            ``reports/STUDY_NAME``, see :func:`study.report.default_report_dir`) and save it
            into the study.
        quiet: print nothing (else what ``python -m study.run`` prints).
        command: the command line to store with the study (the CLI's); default: the
            ``python -m study.run`` command equivalent to this call. Passwords are masked.
        resume_command: what the run prints as the command that resumes it (default: the
            ``python -m study.run`` command for this call).
        live: analyse the study as trials finish, for the dashboard's note and the progress
            line (:mod:`study.live`); default: when it writes a report.

    Returns:
        The study, whether it was made now, the run's status and the report.

    Raises:
        UserError: bad input (a value out of range, a bad space file or storage URL, a study
            that holds another space, a space too big for this machine), refused before
            anything is stored; or a storage that filled up during the run (its trials left
            running are failed and retried by the next run).
    """
    _check_counts(trials, workers, stack, threads, heartbeat_s)
    if until_ci is not None and not (0 < until_ci < math.inf):
        raise UserError(f"--until-ci must be a positive width of alpha's interval, got {until_ci}")
    if study_name is not None and not study_name.strip():
        raise UserError("--study-name must not be empty (leave it out for the space's name)")
    # Optuna logs every trial (and a traceback for an interrupted one); the progress line and
    # the summary say what matters. Bugs still raise with their traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    quiet_sqlalchemy_log()
    quiet_storage_full_threads()
    say: Callable[..., Any] = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    given = space if isinstance(space, Space) else load_space(space or DEFAULT_SPACE)
    loaded = prepare_space(given)  # a user's model and data checked
    where = resolve_device(device)
    # Before anything is stored: the widest trial fits in the device's memory.
    source = space.name if isinstance(space, Space) else space_source(space or DEFAULT_SPACE)
    check_memory(loaded, where, source=source)
    if isinstance(space, Space):
        space = space.name  # as the commands name it
    name = study_name or loaded.name
    rdb = open_storage(storage, heartbeat_s=heartbeat_s)
    try:
        # Without a space named, an existing study runs on the space it stored, so the same
        # call resumes it after the shipped space changed (a new version of the tool).
        stored = None if space else stored_space(rdb, name)
        differ: list[str] = []  # how the shipped space of the same name has changed since
        if stored is not None:
            if stored.get("name") == loaded.name:
                differ = space_diff(stored, loaded.to_dict())
            loaded = prepare_space(space_from_dict(stored))  # the same data, or refused
            check_memory(loaded, where, source="the study's stored space")
        args = dict(space=space, trials=trials, storage=storage, study_name=study_name)
        resume = list(resume_command or _resume_command(**args, workers=workers))
        if command is None:
            command = _call_as_command(**args, device=device, workers=workers, stack=stack)
        study, created = create_or_load_study(
            rdb,
            name,
            loaded,
            build_sampler(loaded, run_seed(loaded, _count_existing(rdb, name))),
            build_pruner(loaded),
            _metadata(loaded, command),
        )
        shown = mask_url(storage)
        say(f"storage:   {shown}")
        say(f"study:     {name} ({'new' if created else 'resumed'}, target {trials} trials)")
        say(f"space:     {_describe(loaded, where)}")
        if differ:
            say(
                f"           the study's own space; the shipped {loaded.name} differs in: "
                + ", ".join(differ)
            )
        say(f"dashboard: optuna-dashboard {dashboard_url(storage)}")
        say(f"resume:    {shlex.join(resume)}")
        cfg = WorkerConfig(
            loaded.to_dict(),
            storage,
            name,
            trials,
            device,
            threads,
            heartbeat_s,
            worker=0,
            stack=stack,
            stack_max_width=(
                default_stack_max_width(where, loaded)
                if stack_max_width is None
                else stack_max_width
            ),
            until_ci=until_ci,
        )
        try:
            while True:
                status = _train(
                    study, loaded, where, say, quiet, cfg, workers, report if live is None else live
                )
                if until_ci is None or status != 0 or not _goes_on(study, cfg, say):
                    break
        except Exception as e:
            if not is_storage_full(e):
                raise
            raise UserError(
                f"storage {shown} is full (no space left on its disk); free some, then resume: "
                + shlex.join(resume)
            ) from None
        rep = None
        if status == 0 and report:
            out = Path(report_dir) if report_dir else default_report_dir(name, storage)
            (rep,) = make_report(study, out, storage)
            say("")
            say(headline(rep.fit, name))
            if words := in_plain_words(rep.fit):
                say(f"  {words}")
            if rep.fit.note:
                say(f"  note: {rep.fit.note}")
            say(f"report:    {out}/report.html (figures and the note are in the dashboard too)")
        return RunResult(study, created, status, rep)
    finally:
        # Closed now: left to the garbage collector, the close (and with it SQLite's checkpoint
        # of the WAL into the file) would come at a random later time. The study can still
        # read: a disposed engine opens new connections when asked.
        rdb.engine.dispose()


def _goes_on(study: optuna.Study, cfg: WorkerConfig, say: Callable[..., Any]) -> bool:
    """After a run with ``--until-ci``: say why it stopped; True when it must go on (the trials
    that finished after the live answer settled widened the interval again)."""
    assert cfg.until_ci is not None
    answer = look(study, cfg.storage, dashboard=False)  # also stores it for the workers
    finished = count_trials(study.get_trials(deepcopy=False)).finished
    if answer is not None and answer.settles(cfg.until_ci):
        say(
            f"stopped:   the answer settled at {finished} trials: {answer.describe()} "
            f"(--until-ci {cfg.until_ci:g}), every width inside its lr range with "
            f"{MIN_COMPLETE_TO_STOP}+ complete trials"
        )
        return False
    why = answer.why_not(cfg.until_ci) if answer is not None else "no finished trials"
    if finished >= cfg.target:
        say(f"stopped:   reached --trials {cfg.target} before the answer settled: {why}")
        return False
    say(f"going on:  {why}")
    return True


def _train(
    study: optuna.Study,
    space: Space,
    device: torch.device,
    say: Callable[..., Any],
    quiet: bool,
    cfg: WorkerConfig,
    workers: int | None,
    live: bool = True,
) -> int:
    """Train to the target in this process and any workers; the summary. Returns the status.

    ``live``: a second process analyses the study as trials finish, for the dashboard's note
    and the progress line (:mod:`study.live`); always with ``--until-ci``, which it decides.
    """
    target = cfg.target
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    finished = count_trials(study.get_trials(deepcopy=False)).finished
    if workers is None:
        workers = default_workers(device, cfg.threads, target - finished)
    progress = Progress(target, quiet=quiet)
    status = 0
    watch = None
    try:
        if finished < target and (live or cfg.until_ci is not None):
            watch = LiveAnswer(cfg.storage, study.study_name, dashboard=live, target=target)
            progress.extra = watch.describe
        if finished >= target:  # the same command again after the study ended
            say(
                f"workers:   none: {finished} trials are finished, the target is {target}"
                " (a larger --trials runs more)"
            )
            fail_stale(study)  # nothing to train, but a killed run's RUNNING trial is failed
        elif workers == 1:
            say("workers:   1 process")
            run_trials(
                study,
                Objective(space, device),
                target,
                progress,
                stack=cfg.stack,
                stack_max_width=cfg.stack_max_width,
                until_ci=cfg.until_ci,
            )
        else:
            configs = [dataclasses.replace(cfg, worker=i) for i in range(workers)]
            # This process is worker 0 (its study carries worker 0's sampler seed).
            status = run_workers(
                configs, study, progress, say, Objective(space, device), start_method(device)
            )
    except KeyboardInterrupt:
        status = 130
    finally:
        if watch is not None:
            watch.close()
    if status == 130:
        say("\ninterrupted: the study is stored; run the resume command to continue")
    trials = study.get_trials(deepcopy=False)
    counts = count_trials(trials)
    progress.update(counts, final=True)
    if status == 1:
        reached = counts.finished >= target
        say(f"a worker died; the others {'reached' if reached else 'did not reach'} the target")
        status = 0 if reached else 1
    say("")
    say(summary_table(trials, list(space.model.widths)))
    return status


def _check_counts(
    trials: int, workers: int | None, stack: int, threads: int, heartbeat_s: int
) -> None:
    for flag, value in (
        ("--trials", trials),
        ("--workers", workers),
        ("--stack", stack),
        ("--threads", threads),
        ("--heartbeat", heartbeat_s),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")


def _describe(space: Space, device: torch.device) -> str:
    """The run's space line: name, fingerprint, widths, lr range, optimizer, epochs, device."""
    line = (
        f"{space.name} [{space.fingerprint()}] widths {list(space.model.widths)}, "
        f"lr {space.lr.low:g}..{space.lr.high:g}, {space.optimizer.name}, "
        f"{space.training.epochs} epochs"
        + (f" (patience {space.training.patience})" if space.training.patience else "")
        + f", device {device}"
    )
    precision = space.training.matmul_precision
    if precision != "highest":  # e.g. ", matmuls in bf16 (matmul_precision medium)"
        line += (
            f", matmuls in {matmul_arithmetic(precision, device)} (matmul_precision {precision})"
        )
    return line


def _resume_command(
    space: str | None, trials: int, storage: str, study_name: str | None, workers: int | None
) -> list[str]:
    """The command that resumes this run (the storage's password masked)."""
    resume = ["python", "-m", "study.run", "--trials", str(trials)]
    if space:
        resume[3:3] = ["--space", space]
    if storage != DEFAULT_STORAGE:
        resume += ["--storage", mask_url(storage)]
    if study_name:
        resume += ["--study-name", study_name]
    if workers is not None:
        resume += ["--workers", str(workers)]
    return resume


def _call_as_command(
    space: str | None,
    trials: int,
    storage: str,
    study_name: str | None,
    device: str,
    workers: int | None,
    stack: int,
) -> list[str]:
    """The arguments of ``python -m study.run`` that make the same run as an API call."""
    argv = _resume_command(space, trials, storage, study_name, workers)[3:]
    if device != "auto":
        argv += ["--device", device]
    if stack != 8:
        argv += ["--stack", str(stack)]
    return argv


def _metadata(space: Space, argv: Sequence[str]) -> dict[str, Any]:
    """What a new study stores beside its space: the command, versions, commit, seed, date."""
    from importlib.metadata import version

    return {
        COMMAND: shlex.join(["python", "-m", "study.run", *mask_argv(argv)]),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "optuna": optuna.__version__,
            "width-lr-study": version("width-lr-study"),
        },
        "git_commit": git_commit(),
        "seed": space.seed,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _count_existing(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    return count_stored_trials(storage, study_id)
