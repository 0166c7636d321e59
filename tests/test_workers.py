"""Many workers, one database: exact totals, kills, Ctrl-C, PostgreSQL, a soak, the dashboard."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from study.names import SURPLUS
from tests.conftest import (
    SLOW_SPACE,
    fault_env,
    fault_taken,
    free_port,
    load,
    postgres_url,
    wait_until,
    write_space,
)

# Short trials: two tiny widths, two epochs.
QUICK = """
[model]
widths = [4, 8]
[lr]
low = 1e-3
high = 1e-1
[training]
epochs = 2
batch_size = 256
[pruner]
name = "none"
[sampler]
n_startup_trials = 2
"""


def start(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m study.run ARGS`` in its own session, as a terminal would run it; ``env`` is
    added to the environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "study.run", "--no-report", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def trials_of(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return load(url, name).trials
    except KeyError:
        return []


def assert_exact(url: str, name: str, target: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``target`` finished trials, none left RUNNING or WAITING, every curve stored."""
    trials = trials_of(url, name)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == target, [t.state for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.number for t in trials}) == len(trials), "duplicate trial numbers"
    for t in finished:
        assert len(t.intermediate_values) == t.user_attrs["epochs_run"] >= 1, t.number
    return trials


def _worker_pids(proc: subprocess.Popen) -> list[int]:
    line = proc.stdout.readline()
    while line and not line.startswith("workers:"):
        line = proc.stdout.readline()
    assert line, "the run printed no worker pids"
    # "workers:   3 processes: this one (10) and 2 started (pids 11, 12)": the started ones
    started = re.search(r"started \(pids? ([\d, ]+)\)", line)
    assert started, line
    return [int(p) for p in started.group(1).split(", ")]


def test_four_workers_on_sqlite_reach_the_exact_total(workdir: Path) -> None:
    path = write_space(workdir, "quick", QUICK)
    proc = start(
        "--space",
        str(path),
        "--trials",
        "40",
        "--workers",
        "4",
        "--storage",
        "sqlite:///w.db",
        cwd=workdir,
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "locked" not in out
    trials = assert_exact("sqlite:///w.db", "quick", 40)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert all(t.system_attrs.get(SURPLUS) for t in failed)  # only slots lost in a race
    widths = [t.params["width"] for t in trials if t.state != TrialState.FAIL]
    assert abs(widths.count(4) - widths.count(8)) <= 4  # fair share across workers too


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_workers_started_either_way_end_cleanly_at_the_exact_total(
    workdir: Path, method: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Fork is the CPU default on Linux; spawn is what a GPU (or macOS) run uses."""
    import study.api
    import study.run

    monkeypatch.setattr(study.api, "start_method", lambda device: method)
    path = write_space(workdir, "quick", QUICK)
    args = ["--space", str(path), "--trials", "12", "--workers", "2", "--storage", "sqlite:///m.db"]
    assert study.run.main([*args, "--no-report"]) == 0
    out = capsys.readouterr().out
    child = int(re.search(r"started \(pid (\d+)\)", out).group(1))  # type: ignore[union-attr]
    assert "ended with" not in out  # the worker process exited with status 0
    trials = assert_exact("sqlite:///m.db", "quick", 12)
    # Each trial names the process that ran it: this one (worker 0) or the child.
    here = os.uname().nodename
    ran = {t.system_attrs["worker"] for t in trials}
    assert ran <= {f"{here}:{os.getpid()}", f"{here}:{child}"}


def _send_worker_id(queue: Any) -> None:
    from study.runner import _worker_id

    queue.put((os.getpid(), _worker_id()))


def test_a_forked_worker_names_itself_not_its_parent() -> None:
    import multiprocessing

    import study.runner  # noqa: F401  (imported in the parent, as the run has it at fork)

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=_send_worker_id, args=(queue,))
    p.start()
    pid, worker = queue.get(timeout=60)
    p.join()
    assert pid != os.getpid() and worker.endswith(f":{pid}")


def test_sigkill_of_one_worker_the_others_finish_and_retry_its_trial(workdir: Path) -> None:
    url = "sqlite:///k.db"
    path = write_space(workdir, "slow", SLOW_SPACE)
    token = workdir / "fault"
    proc = start(
        *("--space", str(path), "--trials", "6", "--workers", "3", "--storage", url),
        *("--heartbeat", "1"),
        cwd=workdir,
        # A started worker kills itself once it has stored a trial's epoch 3 (mid-trial).
        env=fault_env("kill@3:worker", token),
    )
    pids = _worker_pids(proc)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    victim, number = fault_taken(token, proc)
    assert victim in pids
    assert f"(pid {victim}) ended with signal 9" in out
    trials = assert_exact(url, "slow", 6)
    stale = [t for t in trials if t.state == TrialState.FAIL and not t.system_attrs.get(SURPLUS)]
    assert number in {t.number for t in stale}
    assert {t.system_attrs["worker"].rsplit(":", 1)[1] for t in stale} == {str(victim)}
    retries = {
        t.system_attrs["failed_trial"]: t for t in trials if "failed_trial" in t.system_attrs
    }
    assert set(retries) == {t.number for t in stale}  # the victim's trials, retried
    for t in stale:
        assert retries[t.number].params == t.params


def test_ctrl_c_stops_every_worker_and_leaves_nothing_running(workdir: Path) -> None:
    url = "sqlite:///c.db"
    path = write_space(workdir, "slow", SLOW_SPACE)
    proc = start(
        "--space", str(path), "--trials", "50", "--workers", "2", "--storage", url, cwd=workdir
    )
    pids = _worker_pids(proc)
    wait_until(
        lambda: (
            sum(
                t.state == TrialState.RUNNING and bool(t.intermediate_values)
                for t in trials_of(url, "slow")
            )
            >= 2
        ),
        120,
        "running trials in both workers",
    )
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "best value" in out
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert not [t for t in trials_of(url, "slow") if t.state == TrialState.RUNNING]


def test_three_workers_on_postgresql_as_on_three_machines(workdir: Path) -> None:
    url = postgres_url()
    name = f"pg-{uuid.uuid4().hex[:8]}"
    path = write_space(workdir, "quick", QUICK)
    # Three separate commands started together, each as it would be on its own machine.
    procs = [
        start(
            "--space",
            str(path),
            "--trials",
            "30",
            "--storage",
            url,
            "--study-name",
            name,
            "--workers",
            "1",
            "--quiet",
            cwd=workdir,
        )
        for _ in range(3)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out
        assert "study" not in out or "error" not in out
    trials = assert_exact(url, name, 30)
    assert {t.params["width"] for t in trials if t.state != TrialState.FAIL} == {4, 8}
    assert "password" not in str(load(url, name).user_attrs)


def test_soak_kills_and_restarts_lose_nothing(workdir: Path) -> None:
    """Short trials, three workers, SIGKILLs of a worker and of the whole run, restarts."""
    url = "sqlite:///soak.db"
    path = write_space(workdir, "quick", QUICK)
    target, rounds, kills = 150, 3, 0
    args = (
        "--space",
        str(path),
        "--trials",
        str(target),
        "--workers",
        "3",
        "--storage",
        url,
        "--heartbeat",
        "1",
        "--quiet",
    )

    def finished() -> int:
        return sum(t.state.is_finished() for t in trials_of(url, "quick"))

    for r in range(rounds):
        # Each round: a started worker kills itself at its first trial's first epoch (a fault
        # every round, at a point the test names), then the whole run is killed once 5 more
        # trials have finished, wherever its processes are then.
        token = workdir / f"fault{r}"
        proc = start(*args[:-1], cwd=workdir, env=fault_env("kill@1:worker", token))
        pids = _worker_pids(proc)  # not quiet: it prints the worker pids
        victim, _ = fault_taken(token, proc)
        assert victim in pids
        kills += 1
        before = finished()
        wait_until(
            lambda b=before, p=proc: finished() >= b + 5 or p.poll() is not None, 120, "progress"
        )
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # killing the run kills its workers with it
            kills += 1
        proc.wait(timeout=120)
        proc.stdout.close()
        wait_until(
            lambda pids=pids: all(
                not Path(f"/proc/{p}").exists() or "zombie" in Path(f"/proc/{p}/status").read_text()
                for p in pids
            ),
            30,
            "the workers to end with their run",
        )
    final = start(*args, cwd=workdir)
    out, _ = final.communicate(timeout=600)
    assert final.returncode == 0, out
    assert kills >= 3
    trials = assert_exact(url, "quick", target)
    con = sqlite3.connect(workdir / "soak.db")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    # Every failed trial is accounted for: a slot lost in a race, or a killed trial retried.
    failed = [t for t in trials if t.state == TrialState.FAIL]
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    unretried = [
        t.number for t in failed if not t.system_attrs.get(SURPLUS) and t.number not in retried
    ]
    # A kill can land between failing a stale trial and queueing its retry: at most one such
    # trial per kill (its slot is refilled by a new trial; the total above is exact).
    assert len(unretried) <= kills, unretried
    # No trial counted twice: each failed trial is retried at most once to a finished trial.
    origins = [
        t.system_attrs["failed_trial"]
        for t in trials
        if "failed_trial" in t.system_attrs and t.state.is_finished() and t.state != TrialState.FAIL
    ]
    assert len(origins) == len(set(origins))
    print(
        f"soak: {target} trials, 3 workers, {kills} kills, {len(failed)} failed "
        f"({sum(bool(t.system_attrs.get(SURPLUS)) for t in failed)} surplus, "
        f"{len(unretried)} not retried), finished exactly {target}, lost 0"
    )


def test_a_trial_killed_before_its_first_heartbeat_is_failed_and_retried(workdir: Path) -> None:
    from datetime import datetime, timedelta

    from study.runner import fail_stale
    from study.storage import open_storage

    storage = open_storage("sqlite:///h.db", heartbeat_s=1)
    study = optuna.create_study(study_name="h", storage=storage)
    dists = {"width": optuna.distributions.CategoricalDistribution([4, 8])}
    study.add_trial(optuna.trial.create_trial(params={"width": 4}, distributions=dists, value=1.0))
    # What a process killed right after creating its trial leaves: RUNNING, no heartbeat.
    trial_id = storage.create_new_trial(study._study_id)
    storage.set_trial_param(trial_id, "width", 1.0, dists["width"])
    old = datetime.now() - timedelta(seconds=60)
    from optuna.storages._rdb import models

    session = storage.scoped_session()
    session.query(models.TrialModel).filter_by(trial_id=trial_id).one().datetime_start = old
    session.commit()
    session.close()
    fail_stale(study)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].params == {"width": 8} and trials[2].system_attrs["failed_trial"] == 1


def test_dashboard_reads_a_study_while_workers_write_it(workdir: Path) -> None:
    import json
    import urllib.request

    url = "sqlite:///d.db"
    path = write_space(workdir, "quick", QUICK)
    args = ("--space", str(path), "--storage", url, "--quiet")
    first = start(*args, "--trials", "3", "--workers", "1", cwd=workdir)
    assert first.wait(timeout=120) == 0, first.stdout.read()  # the dashboard needs the file
    port = free_port()
    dash = subprocess.Popen(
        [sys.executable, "-m", "study.dashboard", "--storage", url, "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def get(p: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{p}", timeout=10) as r:
            return json.load(r)

    def answers() -> bool:
        if dash.poll() is not None:
            raise AssertionError("dashboard exited: " + dash.stdout.read())
        try:
            return bool(get("/api/studies")["study_summaries"])
        except OSError:
            return False

    seen = []
    writers = None
    try:
        wait_until(answers, 60, "the dashboard to answer")
        study_id = get("/api/studies")["study_summaries"][0]["study_id"]
        writers = start(*args, "--trials", "80", "--workers", "2", cwd=workdir)
        while writers.poll() is None:  # read the study for as long as the workers write it
            seen.append(len(get(f"/api/studies/{study_id}")["trials"]))

        def shows_all() -> bool:  # the dashboard caches its trial list for up to 2 s
            seen.append(len(get(f"/api/studies/{study_id}")["trials"]))
            return seen[-1] >= 80

        wait_until(shows_all, 60, "the dashboard to show every trial")
    finally:
        dash.terminate()
        dash.wait(timeout=30)
        out, _ = writers.communicate(timeout=600) if writers else ("not started", None)
    assert writers is not None and writers.returncode == 0, out
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] >= 80
    trials = assert_exact(url, "quick", 80)
    assert all(t.system_attrs.get(SURPLUS) for t in trials if t.state == TrialState.FAIL)


def test_dashboard_refuses_a_network_address_without_the_flag(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.dashboard import dashboard_command, main

    (workdir / "x.db").write_bytes(b"")
    assert main(["--storage", "sqlite:///x.db", "--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    cmd = dashboard_command("sqlite:///x.db", "0.0.0.0", 8080, allow_remote=True)
    assert cmd[-4:] == ["--host", "0.0.0.0", "--port", "8080"]
    assert main(["--storage", "sqlite:///missing.db"]) == 2
    assert not (workdir / "missing.db").exists()


def _take_queued(url: str, barrier: Any, out: Any, rounds: int) -> None:
    from study.runner import _ask
    from study.storage import open_storage

    study = optuna.load_study(study_name="q", storage=open_storage(url, heartbeat_s=None))
    for _ in range(rounds):
        barrier.wait()  # every process asks at the same moment
        trial = _ask(study)
        out.put("fixed_params" in trial._cached_frozen_trial.system_attrs)
        barrier.wait()


def test_a_queued_trial_is_taken_by_one_process_only(workdir: Path) -> None:
    """Optuna's ask pops a queued trial with a read then a write: on SQLite, several processes
    asking at once took the same one (3 of 15 rounds here) and both trained it. The tool claims
    it in one conditional UPDATE."""
    import multiprocessing

    from study.storage import open_storage, use_wal

    url, processes, rounds = "sqlite:///q.db", 4, 15
    storage = open_storage(url, heartbeat_s=None)
    study = optuna.create_study(study_name="q", storage=storage)
    use_wal(storage)
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [
        ctx.Process(target=_take_queued, args=(url, barrier, out, rounds)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    taken = []
    for _ in range(rounds):
        study.enqueue_trial({"x": 1.0})  # one queued trial a round, four processes asking
        barrier.wait(timeout=60)
        barrier.wait(timeout=60)
        taken.append(sum(out.get(timeout=60) for _ in range(processes)))
    for p in procs:
        p.join(timeout=60)
    assert taken == [1] * rounds
