"""The study end to end on real SQLite files: run, resume, refuse, diverge, kill, interrupt."""

from __future__ import annotations

import math
import os
import signal
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from study.builders import MAX_DEFAULT_WORKERS, default_stack_max_width, default_workers
from study.run import main
from tests.conftest import (
    SLOW_SPACE,
    db_digest,
    fault_env,
    fault_taken,
    load,
    spawn,
    wait_until,
    write_space,
)


def _run(*args: str) -> int:
    """One process unless the test asks for more: a seeded study then replays exactly."""
    return main(["--workers", "1", *args, "--quiet", "--no-report"])


def _states(url: str, name: str) -> dict[TrialState, int]:
    trials = load(url, name).trials
    return {s: sum(t.state == s for t in trials) for s in TrialState}


def test_smoke_study_runs_end_to_end_and_records_each_trial(workdir: Path) -> None:
    url = "sqlite:///s.db"
    assert _run("--space", "smoke", "--trials", "9", "--storage", url, "--study-name", "s") == 0
    study = load(url, "s")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 9 == len(study.trials)
    for t in finished:
        assert set(t.params) == {"width", "lr"}
        assert 1e-4 <= t.params["lr"] <= 1.0
        assert len(t.intermediate_values) == t.user_attrs["epochs_run"] >= 1
        for key in (
            "best_val_loss",
            "final_val_loss",
            "val_accuracy",
            "train_loss",
            "n_params",
            "seconds",
            "device",
            "diverged",
        ):
            assert key in t.user_attrs, key
    for t in finished:
        if t.state == TrialState.COMPLETE:
            assert t.value == pytest.approx(min(t.intermediate_values.values()))
    attrs = study.user_attrs
    assert attrs["space"]["model"]["widths"] == [8, 16, 32]
    assert len(attrs["space_fingerprint"]) == 16 and attrs["seed"] == 0
    assert "--trials 9" in attrs["command"] and attrs["versions"]["optuna"] == optuna.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert study.metric_names == ["validation loss"]  # not "Objective 0" in the dashboard


def test_the_report_of_a_study_too_small_for_any_lr_star_is_written(workdir: Path) -> None:
    # One trial per width: no width has the complete trials an lr* needs, and the figures with
    # log axes have nothing to draw (matplotlib refused to save them).
    args = ["--space", "smoke", "--trials", "3", "--workers", "1", "--quiet"]
    assert main([*args, "--storage", "sqlite:///t.db", "--report-dir", "rep"]) == 0
    for name in ("lr_star_vs_width.png", "isolation.png", "report.html"):
        assert (workdir / "rep" / name).is_file(), name


def test_default_storage_is_a_sqlite_file_in_the_current_folder(workdir: Path) -> None:
    assert _run("--space", "smoke", "--trials", "3") == 0
    assert (workdir / "studies.db").is_file()
    assert len(load("sqlite:///studies.db", "smoke").trials) == 3


def test_trials_is_the_total_resume_reaches_it_and_never_exceeds_it(workdir: Path) -> None:
    args = ["--space", "smoke", "--storage", "sqlite:///s.db", "--study-name", "s"]
    assert _run(*args, "--trials", "6") == 0
    first = [t.params["lr"] for t in load("sqlite:///s.db", "s").trials]
    assert _run(*args, "--trials", "6") == 0
    assert len(load("sqlite:///s.db", "s").trials) == 6  # the same command again runs nothing
    assert _run(*args, "--trials", "12") == 0
    trials = load("sqlite:///s.db", "s").trials
    assert len(trials) == 12
    # A seeded study must not replay the parameters of its first trials after a resume.
    assert not set(first) & {t.params["lr"] for t in trials[6:]}


def test_the_same_command_on_a_finished_study_says_so_and_prints_its_line_once(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--space", "smoke", "--storage", "sqlite:///s.db", "--no-report", "--workers", "1"]
    assert main([*args, "--trials", "6"]) == 0
    capsys.readouterr()
    before = db_digest(workdir / "s.db")
    assert main([*args, "--trials", "6"]) == 0
    out, err = capsys.readouterr()
    assert "workers:   none: 6 trials are finished, the target is 6" in out, out
    assert "workers:   1 process" not in out
    lines = err.splitlines()  # not a terminal: the progress line is printed, once
    assert len(lines) == 1 and lines[0].startswith("[") and "6/6 trials" in lines[0], err
    assert lines[0].endswith("0:00 left"), lines[0]
    assert db_digest(workdir / "s.db") == before


def test_the_same_command_on_a_finished_study_fails_a_killed_runs_running_trial(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from datetime import datetime, timedelta

    from optuna.storages._rdb import models

    from study.storage import open_storage

    args = ["--space", "smoke", "--storage", "sqlite:///s.db", "--no-report", "--workers", "1"]
    assert main([*args, "--trials", "6"]) == 0
    # What a run killed right after creating a surplus trial leaves: RUNNING, no heartbeat.
    storage = open_storage("sqlite:///s.db", heartbeat_s=None)
    study = optuna.load_study(study_name="smoke", storage=storage)
    trial_id = storage.create_new_trial(study._study_id)
    session = storage.scoped_session()
    row = session.query(models.TrialModel).filter_by(trial_id=trial_id).one()
    row.datetime_start = datetime.now() - timedelta(hours=1)
    session.commit()
    session.close()
    capsys.readouterr()
    assert main([*args, "--trials", "6"]) == 0
    assert "workers:   none: 6 trials are finished" in capsys.readouterr().out
    states = [t.state for t in load("sqlite:///s.db", "smoke").trials]
    assert TrialState.RUNNING not in states and states[6] == TrialState.FAIL, states


def test_a_fresh_study_with_the_same_seed_is_reproducible(workdir: Path) -> None:
    for name in ("a", "b"):
        assert (
            _run(
                "--space",
                "smoke",
                "--trials",
                "4",
                "--storage",
                "sqlite:///s.db",
                "--study-name",
                name,
            )
            == 0
        )
    a, b = (load("sqlite:///s.db", n).trials for n in ("a", "b"))
    assert [t.params for t in a] == [t.params for t in b]


def test_default_workers_are_one_per_core_capped_and_one_on_a_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert default_workers(cpu, threads=1, remaining=200) == MAX_DEFAULT_WORKERS == 4
    assert default_workers(cpu, threads=4, remaining=200) == 2
    assert default_workers(cpu, threads=1, remaining=3) == 3  # no process without a trial
    assert default_workers(cpu, threads=1, remaining=0) == 1
    assert default_workers(cuda, threads=1, remaining=200) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_workers(cpu, threads=1, remaining=200) == 2
    assert default_workers(cpu, threads=8, remaining=200) == 1


def test_the_mlp_stacks_every_width_on_a_gpu_and_small_ones_on_cpu_others_when_asked() -> None:
    from study.space import load_space

    mlp, gpt = load_space("mlp_digits"), load_space("gpt_code")
    assert default_stack_max_width(torch.device("cpu"), mlp) == 256
    assert default_stack_max_width(torch.device("cuda"), mlp) == 1024
    # torch.func stacking measured slower for the transformer on CPU: asked for, not default
    assert default_stack_max_width(torch.device("cpu"), gpt) == 0
    assert default_stack_max_width(torch.device("cuda"), gpt) == 0


def test_a_run_without_workers_uses_the_cores_and_its_resume_line_adds_none(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    args = ["--space", "smoke", "--trials", "6", "--storage", "sqlite:///s.db", "--no-report"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "workers:   2 processes" in out, out
    resume = next(line for line in out.splitlines() if line.startswith("resume:"))
    assert "--workers" not in resume
    trials = load("sqlite:///s.db", "smoke").trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
    # Both processes start at once: one may lose a race for a slot (a failed "surplus" trial).
    assert all(t.system_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    assert main([*args, "--workers", "1", "--trials", "7"]) == 0
    out = capsys.readouterr().out
    assert "workers:   1 process\n" in out, out
    resume = next(line for line in out.splitlines() if line.startswith("resume:"))
    assert resume.endswith("--workers 1"), resume


def test_a_changed_space_is_refused_naming_the_fields_and_the_db_is_unchanged(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = "[model]\nwidths = [8, 16]\n[lr]\nlow = 1e-3\nhigh = 1e-1\n[training]\nepochs = 2\n"
    path = write_space(workdir, "mine", text)
    args = ["--storage", "sqlite:///s.db", "--study-name", "s", "--trials", "2"]
    assert _run("--space", str(path), *args) == 0
    before = db_digest(workdir / "s.db")
    write_space(workdir, "mine", text.replace("1e-1", "2e-1").replace("[8, 16]", "[8, 32]"))
    capsys.readouterr()
    assert _run("--space", str(path), *args[:-1], "3") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs in: lr.high, model.widths" in err, err
    assert db_digest(workdir / "s.db") == before
    # A new study name starts afresh with the new space.
    assert (
        _run(
            "--space",
            str(path),
            "--storage",
            "sqlite:///s.db",
            "--study-name",
            "t",
            "--trials",
            "2",
        )
        == 0
    )


def test_a_diverging_lr_is_reported_pruned_and_marked(workdir: Path) -> None:
    # lr up to 10 with Adam: the study must run to its end without an error.
    text = (
        "[model]\nwidths = [16, 64]\n[lr]\nlow = 1.0\nhigh = 10.0\n"
        "[training]\nepochs = 3\n[pruner]\nname = 'none'\n"
    )
    path = write_space(workdir, "hot", text)
    assert _run("--space", str(path), "--trials", "6", "--storage", "sqlite:///s.db") == 0
    trials = load("sqlite:///s.db", "hot").trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    diverged = [t for t in trials if t.user_attrs["diverged"]]
    assert diverged, "lr in [1, 10] with Adam should diverge"
    for t in diverged:
        assert t.state == TrialState.PRUNED
        assert t.intermediate_values, "the diverged loss must be reported"
        last = t.intermediate_values[max(t.intermediate_values)]
        initial = t.user_attrs["initial_val_loss"]
        true = float(t.user_attrs["final_val_loss"])
        train_loss = float(t.user_attrs["train_loss"])
        assert not max(true, train_loss) <= 10 * initial  # it did diverge (NaN counts)
        # Stored at most at the initial loss (no better than not training: its curve does not
        # flatten the others in the dashboard); the true loss is in the trial's attrs.
        assert last == (initial if math.isnan(true) else min(true, initial))


def test_every_width_gets_its_equal_share_even_when_stacked(workdir: Path) -> None:
    assert _run("--space", "smoke", "--trials", "12", "--storage", "sqlite:///s.db") == 0
    study = load("sqlite:///s.db", "smoke")
    counts = {w: sum(t.params["width"] == w for t in study.trials) for w in (8, 16, 32)}
    assert counts == {8: 4, 16: 4, 32: 4}


def test_sigkill_mid_study_is_resumed_to_exactly_the_total(workdir: Path) -> None:
    url = "sqlite:///k.db"
    path = write_space(workdir, "slow", SLOW_SPACE)
    args = ("--space", str(path), "--storage", url, "--heartbeat", "1")
    assert _run(*args, "--trials", "2") == 0  # mid-study: two trials finished before the kill
    token = workdir / "fault"
    # The process kills itself once it has stored a trial's epoch 3: mid-trial, curve stored.
    proc = spawn(*args, "--trials", "5", cwd=workdir, env=fault_env("kill@3", token))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, out
    pid, number = fault_taken(token, proc)
    assert pid == proc.pid
    (killed_trial,) = [t for t in load(url, "slow").trials if t.number == number]
    assert killed_trial.state == TrialState.RUNNING
    assert sorted(killed_trial.intermediate_values) == [1, 2, 3]
    killed = _states(url, "slow")[TrialState.RUNNING]
    assert killed >= 1  # left behind by the killed process (a stack of trials, or one)

    resumed = spawn(*args, "--trials", "5", cwd=workdir)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    states = _states(url, "slow")
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 5
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0
    trials = load(url, "slow").trials
    stale = [t for t in trials if t.state == TrialState.FAIL and "surplus" not in t.system_attrs]
    assert len(stale) == killed and number in {t.number for t in stale}  # failed as stale...
    retried = {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}
    assert retried == {t.number for t in stale}  # ...and each queued again


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_failed_meanwhile_by_another_process_is_dropped_and_its_retry_run(
    workdir: Path,
) -> None:
    """A machine that stalls past the grace period (suspended, overloaded) finds its trial failed
    by another process's stale check and its retry queued: it drops the trial and goes on."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from study._optuna_fixes import claim_stale_trial

    url = "sqlite:///m.db"
    path = write_space(workdir, "slow", SLOW_SPACE)
    token = workdir / "fault"
    # The run freezes itself (SIGSTOP) once it has stored a trial's epoch 3, as a suspended
    # laptop would; it goes on where it was when sent SIGCONT.
    proc = spawn(
        *("--space", str(path), "--trials", "4", "--storage", url, "--stack", "1"),
        cwd=workdir,
        env=fault_env("stop@3", token),
    )
    try:
        pid, lost = fault_taken(token, proc)
        study = load(url, "slow")
        (trial,) = [t for t in study.trials if t.number == lost]
        assert trial.state == TrialState.RUNNING and len(trial.intermediate_values) == 3
        # What another process's stale check does meanwhile: fail it, queue its retry.
        assert claim_stale_trial(study, trial._trial_id)
        RetryHeartbeatStaleTrialCallback(max_retry=3)(
            study, study._storage.get_trial(trial._trial_id)
        )
        os.kill(pid, signal.SIGCONT)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert f"trial {lost} was failed meanwhile by another process" in out, out
    assert "Traceback" not in out
    trials = load(url, "slow").trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [lost]
    assert [t.system_attrs.get("failed_trial") for t in trials].count(lost) == 1  # retried
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def test_ctrl_c_stops_cleanly_with_the_summary(workdir: Path) -> None:
    url = "sqlite:///c.db"
    path = write_space(workdir, "slow", SLOW_SPACE)
    proc = spawn("--space", str(path), "--trials", "50", "--storage", url, cwd=workdir)

    def one_finished() -> bool:
        try:
            return any(t.state.is_finished() for t in load(url, "slow").trials)
        except KeyError:
            return False

    wait_until(one_finished, 120, "a finished trial")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "best value" in out  # the summary table
    assert "Traceback" not in out
    assert _states(url, "slow")[TrialState.RUNNING] == 0


def test_the_objective_runs_in_a_plain_optuna_optimize(workdir: Path) -> None:
    """``study.objective.Objective`` is an ordinary Optuna objective too: a user's own
    ``study.optimize`` on an SQLite file gets trials with the tool's params, values, curves and
    attributes."""
    from study.objective import Objective
    from study.space import load_space

    space = load_space("smoke")
    study = optuna.create_study(storage="sqlite:///plain.db", study_name="plain")
    study.optimize(Objective(space, torch.device("cpu")), n_trials=4)
    trials = load("sqlite:///plain.db", "plain").trials
    assert [t.state for t in trials].count(TrialState.FAIL) == 0
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert done, [t.state for t in trials]
    for t in done:
        assert set(t.params) == {"width", "lr"} and t.params["width"] in (8, 16, 32)
        assert sorted(t.intermediate_values) == [1, 2, 3]  # every epoch stored
        assert t.value == min(t.intermediate_values.values()) == t.user_attrs["best_val_loss"]
        assert t.user_attrs["epochs_run"] == 3 and t.user_attrs["diverged"] is False


def test_the_same_command_resumes_a_study_after_the_shipped_space_changed(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A study made by an earlier version, whose shipped mlp_digits was another space, resumes
    with the same command: without --space it runs on the space it stored (workers too)."""
    old = "[model]\nwidths = [8, 16]\n[lr]\nlow = 1e-3\nhigh = 1e-1\n[training]\nepochs = 2\n"
    (workdir / "old").mkdir()
    path = write_space(workdir / "old", "mlp_digits", old)  # as an earlier version shipped it
    made = ["--space", str(path), "--study-name", "mlp_digits", "--trials", "3", "--workers", "1"]
    assert main([*made, "--no-report", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["--trials", "6", "--workers", "2", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "the study's own space; the shipped mlp_digits differs in: " in out, out
    assert "resume:    python -m study.run --trials 6 --workers 2\n" in out, out
    trials = load("sqlite:///studies.db", "mlp_digits").trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6 and {t.params["width"] for t in trials} <= {8, 16}
    assert all(t.user_attrs["epochs_run"] <= 2 for t in finished)  # the stored space's epochs
    # Naming the shipped space is refused, saying how to go on.
    assert main(["--space", "mlp_digits", "--trials", "7"]) == 2
    err = capsys.readouterr().err
    assert "leave out --space to run it on its own space" in err, err


def test_an_early_stopped_trial_completes_with_its_best_loss(workdir: Path) -> None:
    """training.patience: a trial with no better validation loss for that many epochs stops
    there, COMPLETE (its value enters the fit), alone or in a stack."""
    text = (
        "[model]\nwidths = [16, 64]\n[lr]\nlow = 3e-2\nhigh = 1e-1\n"  # fast to overfit
        "[training]\nepochs = 40\nbatch_size = 128\npatience = 2\n[pruner]\nname = 'none'\n"
    )
    path = write_space(workdir, "es", text)
    assert _run("--space", str(path), "--trials", "8", "--storage", "sqlite:///s.db") == 0
    trials = load("sqlite:///s.db", "es").trials
    stopped = [t for t in trials if t.user_attrs.get("early_stopped")]
    assert stopped and {t.user_attrs.get("stacked") for t in stopped} >= {4}
    for t in stopped:
        curve = [t.intermediate_values[k] for k in sorted(t.intermediate_values)]
        assert t.state == TrialState.COMPLETE and t.value == min(curve)
        assert len(curve) == t.user_attrs["epochs_run"] == t.user_attrs["best_epoch"] + 2 < 40
        assert min(curve[-2:]) >= t.value  # two epochs without a better loss, then the stop


def test_width_is_stored_as_an_integer_on_a_log_scale(workdir: Path) -> None:
    """optuna-dashboard orders an integer parameter and can draw it on a log axis; it showed
    the categorical width of earlier versions as unordered categories (64, 512, 32, ...)."""
    assert _run("--space", "smoke", "--trials", "6", "--storage", "sqlite:///w.db") == 0
    trials = load("sqlite:///w.db", "smoke").trials
    assert {t.params["width"] for t in trials} <= {8, 16, 32}
    for t in trials:
        assert t.distributions["width"] == optuna.distributions.IntDistribution(8, 32, log=True)


def test_a_study_stored_with_a_categorical_width_resumes_with_it(workdir: Path) -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from study.space import load_space

    space = load_space("smoke")
    study = optuna.create_study(study_name="smoke", storage="sqlite:///c.db")
    study.set_user_attr("space_fingerprint", space.fingerprint())
    study.set_user_attr("space", space.to_dict())
    old = {
        "width": CategoricalDistribution([8, 16, 32]),
        "lr": FloatDistribution(1e-4, 1, log=True),
    }
    study.add_trial(
        optuna.trial.create_trial(
            params={"width": 16, "lr": 1e-2},
            distributions=old,
            value=0.5,
            user_attrs={"best_val_loss": 0.5, "diverged": False, "epochs_run": 3},
        )
    )
    assert _run("--trials", "5", "--storage", "sqlite:///c.db", "--study-name", "smoke") == 0
    trials = load("sqlite:///c.db", "smoke").trials
    assert sum(t.state.is_finished() for t in trials) == 5
    assert all(t.distributions["width"] == old["width"] for t in trials)


def test_failing_a_trial_is_tried_again_when_sqlite_says_locked(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After Ctrl-C every worker fails its trial at once; SQLite refused one such write at once
    with "database is locked" in CI. The write is tried again."""
    import sqlalchemy

    from study import runner
    from study.storage import open_storage

    study = optuna.create_study(study_name="l", storage=open_storage("sqlite:///l.db"))
    trial = study.ask()
    real, refusals = study.tell, [2]

    def locked_twice(*args: object, **kwargs: object) -> object:
        if refusals[0]:
            refusals[0] -= 1
            locked = sqlalchemy.exc.OperationalError("UPDATE", {}, Exception("database is locked"))
            raise optuna.exceptions.StorageInternalError("commit failed") from locked
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "tell", locked_twice)
    monkeypatch.setattr(runner, "FAIL_RETRIES", 2)
    runner._fail_all(study, [trial])
    assert load("sqlite:///l.db", "l").trials[0].state == TrialState.FAIL
    refusals[0] = 3  # more refusals than tries: the error goes up
    with pytest.raises(optuna.exceptions.StorageInternalError):
        runner._fail_all(study, [study.ask()])
