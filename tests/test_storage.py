"""Bad storage input: one line, exit status 2, and the existing database byte-for-byte unchanged."""

from __future__ import annotations

import math
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from study.objective import TrialEnd, finish_trials, report, set_user_attrs
from study.run import main
from study.storage import open_storage
from study.urls import mask_url
from tests.conftest import db_digest, postgres_url


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["--space", "smoke", "--trials", "2", "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def test_unparsable_url(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "does not parse" in _fails(capsys, "--storage", "not a url")


def test_missing_folder_is_not_created(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "--storage", "sqlite:///nowhere/s.db")
    assert "folder nowhere does not exist" in err
    assert not (workdir / "nowhere").exists()


def test_file_that_is_not_a_database(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "notes.db"
    path.write_text("these are my notes, not a database\n")
    before = db_digest(path)
    assert "is not a SQLite database" in _fails(capsys, "--storage", "sqlite:///notes.db")
    assert db_digest(path) == before


def test_database_of_another_tool(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    con.execute("INSERT INTO invoices (amount) VALUES (9.5)")
    con.commit()
    con.close()
    before = db_digest(path)
    err = _fails(capsys, "--storage", "sqlite:///other.db")
    assert "database of another tool (tables: invoices)" in err
    assert db_digest(path) == before


def _optuna_db(path: Path) -> None:
    study = optuna.create_study(study_name="foreign", storage=f"sqlite:///{path}")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))


def test_database_from_a_newer_optuna_schema(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workdir / "new.db"
    _optuna_db(path)
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = 'v99.0.0.a'")
    con.commit()
    con.close()
    before = db_digest(path)
    err = _fails(capsys, "--storage", "sqlite:///new.db")
    assert "written by a newer Optuna" in err
    assert db_digest(path) == before


def test_study_not_made_by_this_tool(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = workdir / "o.db"
    _optuna_db(path)
    before = db_digest(path)
    err = _fails(capsys, "--storage", "sqlite:///o.db", "--study-name", "foreign")
    assert "holds no search space" in err
    assert db_digest(path) == before


def test_a_study_left_half_made_by_a_killed_run_is_finished_by_the_next(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed between creating its study and storing the space leaves an empty study
    without a space: the next run stores it and runs (it refused such a study before)."""
    import study.storage

    monkeypatch.setattr(study.storage, "CREATION_WAIT_S", 0.1)  # no creator is on its way
    optuna.create_study(study_name="smoke", storage="sqlite:///h.db")  # what the kill leaves
    assert (
        main(
            [
                "--space",
                "smoke",
                "--trials",
                "3",
                "--storage",
                "sqlite:///h.db",
                "--quiet",
                "--no-report",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    made = optuna.load_study(study_name="smoke", storage="sqlite:///h.db")
    assert made.user_attrs["space"]["name"] == "smoke" and "command" in made.user_attrs
    assert sum(t.state.is_finished() for t in made.trials) == 3


def test_an_empty_study_of_another_direction_is_refused(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workdir / "max.db"
    optuna.create_study(study_name="smoke", storage=f"sqlite:///{path}", direction="maximize")
    before = db_digest(path)
    assert "optimizes maximize" in _fails(capsys, "--storage", f"sqlite:///{path}")
    assert db_digest(path) == before


@pytest.mark.parametrize("name", ["", "   "])
def test_an_empty_study_name_is_refused_not_taken_for_the_default(
    workdir: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = workdir / "studies.db"
    assert main(["--space", "smoke", "--trials", "1", "--quiet", "--no-report"]) == 0
    before = db_digest(path)
    assert "--study-name must not be empty" in _fails(capsys, "--study-name", name)
    assert db_digest(path) == before


def test_read_only_database(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    path = workdir / "ro.db"
    _optuna_db(path)
    path.chmod(0o444)
    assert "read-only" in _fails(capsys, "--storage", "sqlite:///ro.db")


def test_password_is_masked() -> None:
    masked = mask_url("postgresql+psycopg://alice:s3cret@db.example/optuna")
    assert "s3cret" not in masked and "alice" in masked


@pytest.mark.parametrize("url", ["sqlite:///attrs.db", None])
def test_user_attrs_are_written_at_once_overwritten_and_refused_once_finished(
    workdir: Path, url: str | None
) -> None:
    storage = open_storage(url, heartbeat_s=None) if url else optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    set_user_attrs(trial, {"a": 1, "b": "inf", "c": True, "d": 0.5})
    set_user_attrs(trial, {"a": 2})
    study.tell(trial, 1.0)
    assert study.trials[0].user_attrs == {"a": 2, "b": "inf", "c": True, "d": 0.5}
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        set_user_attrs(trial, {"e": 1})


@pytest.mark.parametrize("url", ["sqlite:///values.db", None])
def test_a_report_is_stored_at_once_and_one_to_a_trial_failed_meanwhile_is_lost(
    workdir: Path, url: str | None
) -> None:
    storage = open_storage(url, heartbeat_s=None) if url else optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    trial, other = study.ask(), study.ask()
    lost: set[int] = set()
    for step, value in enumerate([0.5, math.nan, math.inf], 1):
        assert report(trial, step, value, lost)
    fresh = optuna.load_study(study_name=study.study_name, storage=storage).trials
    assert str(fresh[0].intermediate_values) == str({1: 0.5, 2: math.nan, 3: math.inf})
    # Another process fails `other` meanwhile (its stale check saw no heartbeat from here).
    optuna.load_study(study_name=study.study_name, storage=storage).tell(
        other.number, state=TrialState.FAIL
    )
    assert not report(other, 1, 0.3, lost) and lost == {other._trial_id}
    assert optuna.load_study(study_name=study.study_name, storage=storage).trials[1].state == (
        TrialState.FAIL
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "memory"])
def test_trials_ended_by_finish_trials_are_stored_as_tell_stores_them(
    workdir: Path, backend: str
) -> None:
    """finish_trials (the runner's end of a stack of trials) stores each trial's attrs, state
    and value as set_user_attr and study.tell do, a pruned trial's value being its last
    reported one; a trial another process failed meanwhile is reported lost, left as it is."""
    url = {"sqlite": "sqlite:///finish.db", "postgresql": None, "memory": None}[backend]
    if backend == "postgresql":
        url = postgres_url()
    storage = open_storage(url, heartbeat_s=None) if url else optuna.storages.InMemoryStorage()
    name = f"finish-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=storage, study_name=name)
    cases: list[tuple[list[float], TrialState, float | None]] = [
        ([0.9, 0.5, 0.6], TrialState.COMPLETE, 0.5),
        ([0.9, math.inf], TrialState.COMPLETE, math.inf),
        ([0.9, 0.7], TrialState.PRUNED, None),  # stored with value 0.7
        ([0.9, math.nan], TrialState.PRUNED, None),  # NaN: stored without a value
        ([], TrialState.PRUNED, None),
    ]
    ended, told = [study.ask() for _ in cases], [study.ask() for _ in cases]
    lost = study.ask()
    for trial, (curve, _, _) in zip(ended, cases, strict=True):
        for step, v in enumerate(curve, 1):
            trial.report(v, step)
    lost.report(0.3, 1)
    for i, (trial, (curve, state, value)) in enumerate(zip(told, cases, strict=True)):
        for step, v in enumerate(curve, 1):
            trial.report(v, step)
        trial.set_user_attr("case", i)
        trial.set_user_attr("loss", "inf")
        study.tell(trial, value, state=state)
    # Another process fails `lost` meanwhile (as a stale trial).
    other = optuna.load_study(study_name=name, storage=url or storage)
    other.tell(lost.number, state=TrialState.FAIL)
    ends = [
        TrialEnd(trial, state, value, {"case": i, "loss": "inf"})
        for i, (trial, (_, state, value)) in enumerate(zip(ended, cases, strict=True))
    ]
    assert finish_trials(study, [*ends, TrialEnd(lost, TrialState.COMPLETE, 0.3, {"case": 9})]) == {
        lost._trial_id
    }
    stored = optuna.load_study(study_name=name, storage=url or storage).trials
    n = len(cases)
    for a, b in zip(stored[:n], stored[n : 2 * n], strict=True):
        assert (a.state, str(a.values), str(a.intermediate_values), a.user_attrs) == (
            b.state,
            str(b.values),
            str(b.intermediate_values),
            b.user_attrs,
        )
        assert a.datetime_complete is not None and a.datetime_complete >= a.datetime_start
    assert [t.values for t in stored[:n]] == [[0.5], [math.inf], [0.7], None, None]
    assert (stored[-1].state, stored[-1].values) == (TrialState.FAIL, None)


def _open_at_once(url: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        optuna.create_study(study_name="s", storage=open_storage(url), load_if_exists=True)
    except BaseException as e:  # reported to the parent, which asserts none
        errors.put(f"{type(e).__name__}: {e}")


def test_processes_creating_a_fresh_sqlite_file_at_once_all_open_it(workdir: Path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):
        url = f"sqlite:///fresh{round_}.db"
        barrier, errors = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(url, barrier, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        assert [p.exitcode for p in procs] == [0] * 4
        assert errors.empty(), errors.get()


def _templates(k: int, worker: str) -> list[optuna.trial.FrozenTrial]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from study.objective import trial_template

    dists = {"width": CategoricalDistribution([32, 64]), "lr": FloatDistribution(1e-5, 1, log=True)}
    return [
        trial_template({"width": 64, "lr": 10 ** -(i + 1)}, dists, {"worker": worker})
        for i in range(k)
    ]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "memory"])
def test_trials_created_from_templates_are_running_with_their_params_and_attrs(
    workdir: Path, backend: str
) -> None:
    """create_trials (a stack's trials) stores each trial as Optuna's create_new_trial does
    (number, state, start, params and their distributions, system attrs)."""
    from study.objective import create_trials

    url = {"sqlite": "sqlite:///create.db", "postgresql": None, "memory": None}[backend]
    if backend == "postgresql":
        url = postgres_url()
    storage = open_storage(url, heartbeat_s=None) if url else optuna.storages.InMemoryStorage()
    name = f"create-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(storage=storage, study_name=name)
    study.ask()  # a trial before: numbers go on from it
    ours = create_trials(study, _templates(3, "here"))
    theirs = [study._storage.create_new_trial(study._study_id, t) for t in _templates(3, "here")]
    assert create_trials(study, []) == []
    for trial_id, lr in zip(ours, [0.1, 0.01, 0.001], strict=True):
        cached = study._storage.get_trial(trial_id)
        assert (cached.params, cached.system_attrs) == ({"width": 64, "lr": lr}, {"worker": "here"})
        assert optuna.Trial(study, trial_id).params == {"width": 64, "lr": lr}
    stored = optuna.load_study(study_name=name, storage=url or storage).trials
    assert [t.number for t in stored] == list(range(7))
    assert [t._trial_id for t in stored[1:4]] == ours and [
        t._trial_id for t in stored[4:]
    ] == theirs
    for a, b in zip(stored[1:4], stored[4:], strict=True):
        assert (a.state, a.params, a.distributions, a.system_attrs, a.user_attrs) == (
            b.state,
            b.params,
            b.distributions,
            b.system_attrs,
            b.user_attrs,
        )
        assert a.state == TrialState.RUNNING and a.datetime_complete is None
        assert a.datetime_start is not None and a.datetime_start <= b.datetime_start
    study.tell(optuna.Trial(study, ours[0]), 0.5)  # Optuna can go on with them
    assert optuna.load_study(study_name=name, storage=url or storage).trials[1].value == 0.5


def _create_at_once(
    url: str, name: str, barrier: Any, out: Any, rounds: int, optuna_too: bool
) -> None:
    import os

    from study.objective import create_trials

    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat_s=None))
        made = []
        for _ in range(rounds):
            barrier.wait(timeout=60)
            ids = create_trials(study, _templates(4, str(os.getpid())))
            made.append(ids)
            if optuna_too:  # Optuna's own creation, interleaved with the others'
                study.ask()
        out.put(("ok", made))
    except BaseException as e:  # reported to the parent, which asserts none
        out.put(("error", f"{type(e).__name__}: {e}"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_creating_trials_at_once_number_them_as_optuna_does(
    workdir: Path, backend: str
) -> None:
    """Four processes creating stacks of 4 at the same moment, one of them asking Optuna for a
    trial after each stack: every number is given once, 0..N-1, in each stack in order, without
    a "database is locked" on SQLite."""
    import multiprocessing

    from study.storage import use_wal

    url = postgres_url() if backend == "postgresql" else "sqlite:///many.db"
    name = f"many-{uuid.uuid4().hex[:8]}"
    storage = open_storage(url, heartbeat_s=None)
    optuna.create_study(study_name=name, storage=storage)
    use_wal(storage)
    ctx = multiprocessing.get_context("fork")
    processes, rounds = 4, 8
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [
        ctx.Process(target=_create_at_once, args=(url, name, barrier, out, rounds, i == 0))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r[0] for r in results] == ["ok"] * processes, results
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert len(trials) == processes * rounds * 4 + rounds
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    number = {t._trial_id: t.number for t in trials}
    for _, made in results:
        for ids in made:
            assert [number[i] for i in ids] == sorted(number[i] for i in ids)


@pytest.mark.parametrize("moment", ["before the trials are counted", "after"])
def test_a_study_another_process_is_creating_is_loaded_whenever_it_finishes(
    workdir: Path, moment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes start a new study at once; the one that lost the race to create it finds
    it with no space yet, or with its space and its first trial, depending on when the creator
    finishes (sets the space, then creates trials). Either way it loads the study: read in the
    other order (attrs, then trials: optuna.get_all_study_summaries), a creator finishing in
    between made it a foreign study, "holds no search space" (seen on a PostgreSQL database
    holding many studies)."""
    import study.storage
    from study.space import load_space

    space = load_space("smoke")
    storage = open_storage("sqlite:///race.db", heartbeat_s=None)
    creator = optuna.create_study(study_name="s", storage=storage)  # not finished yet
    count = study.storage.count_stored_trials

    def finish_creating() -> None:
        creator.set_user_attr("space", space.to_dict())
        creator.set_user_attr("space_fingerprint", space.fingerprint())
        creator.ask()

    def count_then_or_after(*args: Any) -> int:
        monkeypatch.setattr(study.storage, "count_stored_trials", count)  # once
        if moment == "before the trials are counted":
            finish_creating()
            return count(*args)
        n = count(*args)
        finish_creating()
        return n

    monkeypatch.setattr(study.storage, "count_stored_trials", count_then_or_after)
    sampler, pruner = optuna.samplers.RandomSampler(), optuna.pruners.NopPruner()
    loaded, created = study.storage.create_or_load_study(storage, "s", space, sampler, pruner, {})
    assert not created and loaded.user_attrs["space_fingerprint"] == space.fingerprint()
