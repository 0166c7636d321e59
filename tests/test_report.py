"""The report on real smoke studies: files, dashboard note and figure, bad input, a real browser."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
from optuna_dashboard._custom_plot_data import SYSTEM_ATTR_PLOT_DATA

from study import importances, report
from study.run import main as run_main
from tests.conftest import CHROMIUM_FLAGS, db_digest, find_chromium, free_port, load, wait_until

URL = "sqlite:///r.db"


@pytest.fixture(scope="module")
def smoke_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One smoke study of 18 trials (6 per width), made once for this module."""
    folder = tmp_path_factory.mktemp("report")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for name, seed_args in (("smoke", []), ("other", [])):
            assert (
                run_main(
                    [
                        "--space",
                        "smoke",
                        "--trials",
                        "18",
                        "--storage",
                        URL,
                        "--study-name",
                        name,
                        "--quiet",
                        "--no-report",
                        "--workers",
                        "1",
                        *seed_args,
                    ]
                )
                == 0
            )
    finally:
        os.chdir(cwd)
    return folder / "r.db"


@pytest.fixture
def db(smoke_db: Path, workdir: Path) -> Path:
    for suffix in ("", "-wal"):
        if Path(f"{smoke_db}{suffix}").exists():
            shutil.copy(f"{smoke_db}{suffix}", workdir / f"r.db{suffix}")
    return workdir / "r.db"


# What a report saves into the study for the dashboard, in the dashboard's order.
SAVED_FIGURES = [report.DASHBOARD_FIGURE_ID]


def _report(*args: str) -> int:
    return report.main(["--storage", URL, "--bootstrap", "100", *args])


def test_report_writes_every_file(
    db: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _report("--study-name", "smoke", "--out", "out") == 0
    out = workdir / "out"
    for name in (
        "summary.csv",
        "fit.json",
        "trials.csv",
        "report.html",
        "loss_vs_lr.png",
        "lr_star_vs_width.png",
        "isolation.png",
        "training_curves.png",
        "importance.png",
        "contour.png",
    ):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [int(r["width"]) for r in rows] == [8, 16, 32]
    assert set(rows[0]) >= {
        "width",
        "lr_star",
        "lr_low",
        "lr_high",
        "best_value",
        "trials",
        "complete",
        "pruned",
        "diverged",
        "at_edge",
    }
    assert sum(int(r["trials"]) for r in rows) == 18
    fit = json.loads((out / "fit.json").read_text())
    assert {"alpha", "alpha_low", "alpha_high", "shift_log2", "settings", "counts"} <= set(fit)
    assert fit["counts"]["trials"] == 18
    trials = list(csv.DictReader(open(out / "trials.csv")))
    assert len(trials) == 18 and {"width", "lr", "state", "diverged"} <= set(trials[0])
    page = (out / "report.html").read_text()
    assert "<script src=" not in page  # plotly is bundled: no network needed
    stdout = capsys.readouterr().out
    assert "smoke: " in stdout and "report: out/report.html" in stdout


def test_report_saves_the_figure_and_the_note_into_the_study(db: Path) -> None:
    study = load(URL, "smoke")
    trials_before = [(t.number, t.state, t.value, t.params, t.user_attrs) for t in study.trials]
    attrs_before = study.user_attrs
    for _ in range(2):  # a second report replaces the figure, it does not add one
        assert _report("--study-name", "smoke", "--out", "out") == 0
    study = load(URL, "smoke")
    note = optuna_dashboard.get_note(study)
    assert "How the optimal learning rate shifts with width" in note
    assert "python -m study.report" in note
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    plots = {k.split(":")[2] for k in system_attrs if k.startswith(SYSTEM_ATTR_PLOT_DATA)}
    assert plots == set(SAVED_FIGURES)
    # Nothing else in the study was written.
    assert [
        (t.number, t.state, t.value, t.params, t.user_attrs) for t in study.trials
    ] == trials_before
    assert study.user_attrs == attrs_before


def test_the_report_saves_into_the_study_without_importing_the_dashboards_app(db: Path) -> None:
    # `import optuna_dashboard` imports its web app and scikit-learn (1.2 s): the report loads
    # only the two modules that save. Its second process alone imports scikit-learn (fANOVA).
    code = (
        "import sys; from study import report; "
        f"rc = report.main(['--storage', '{URL}', '--study-name', 'smoke', '--bootstrap', '100']); "
        "print(rc, 'optuna_dashboard' in sys.modules, 'sklearn' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=db.parent, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.splitlines()[-1] == "0 False False", (done.stdout, done.stderr)
    study = load(URL, "smoke")
    assert "How the optimal learning rate shifts with width" in optuna_dashboard.get_note(study)
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    assert any(k.startswith(SYSTEM_ATTR_PLOT_DATA) for k in system_attrs)


def test_saving_into_the_dashboard_falls_back_to_the_package_import(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plotly.graph_objects as go

    from study import dashboard

    real = dashboard.importlib.util.find_spec  # optuna-dashboard's is hidden, no other module's

    def hide_the_dashboard(name: str, *args: object) -> object:
        return None if name == "optuna_dashboard" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(dashboard.importlib.util, "find_spec", hide_the_dashboard)
    dashboard._saving_modules.cache_clear()
    try:
        assert dashboard._saving_modules() == (optuna_dashboard, optuna_dashboard)
        study = load(URL, "smoke")
        dashboard.save_to_dashboard(study, {"fallback": go.Figure()}, "a note")
    finally:
        dashboard._saving_modules.cache_clear()
    assert optuna_dashboard.get_note(load(URL, "smoke")) == "a note"
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    assert any(k.startswith(f"{SYSTEM_ATTR_PLOT_DATA}fallback:") for k in system_attrs)


def test_the_pages_importance_figure_is_optunas_own(db: Path) -> None:
    from study import figures_plotly

    study = load(URL, "smoke")
    importances, _ = report.importances_of(study.get_trials(), study.direction)
    ours = figures_plotly.plotly_importances(importances["PED-ANOVA"], study)
    assert ours.to_dict() == optuna.visualization.plot_param_importances(study).to_dict()


def test_compare_puts_two_studies_side_by_side(db: Path, workdir: Path) -> None:
    assert _report("--study-name", "smoke", "--compare", "other", "--out", "cmp") == 0
    for name in ("compare_lr_star_vs_width.png", "compare_loss_vs_lr.png", "compare.json"):
        assert (workdir / "cmp" / name).stat().st_size > 0
    assert set(json.loads((workdir / "cmp" / "compare.json").read_text())) == {"smoke", "other"}


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert report.main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_missing_storage_is_an_error_and_is_not_created(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "no such database file" in _fails(capsys, "--storage", "sqlite:///none.db")
    assert not (workdir / "none.db").exists()


def test_unknown_study_lists_the_studies_and_changes_nothing(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = db_digest(db)
    err = _fails(capsys, "--storage", URL, "--study-name", "nope")
    assert "study 'nope' not found" in err and "other, smoke" in err
    assert db_digest(db) == before


def test_ambiguous_storage_asks_for_a_study_name(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "choose one with --study-name" in _fails(capsys, "--storage", URL)


def test_study_with_no_finished_trials(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    optuna.create_study(study_name="empty", storage=URL)
    assert "no finished trials yet" in _fails(capsys, "--storage", URL, "--study-name", "empty")


def test_one_width_gives_a_report_that_says_what_is_missing(workdir: Path) -> None:
    space = workdir / "one.toml"
    space.write_text(
        "[model]\nwidths = [16]\n[lr]\nlow = 1e-3\nhigh = 1.0\n"
        "[training]\nepochs = 2\n[pruner]\nname = 'none'\n"
    )
    assert (
        run_main(
            ["--space", str(space), "--trials", "4", "--storage", URL, "--quiet", "--no-report"]
            + ["--workers", "1"]
        )
        == 0
    )
    assert _report("--study-name", "one", "--out", "one") == 0
    fit = json.loads((workdir / "one" / "fit.json").read_text())
    assert fit["alpha"] is None and "at least 2 widths" in fit["note"]


def test_html_report_renders_in_a_real_browser_without_script_errors(
    db: Path, workdir: Path
) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed (Debian package 'chromium'); .ci/run installs it")
    assert _report("--study-name", "smoke", "--out", "out", "--no-dashboard") == 0
    page = (workdir / "out" / "report.html").resolve().as_uri()

    def browse(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        profile = workdir / f"profile-{name}"  # a new, empty profile for every start
        profile.mkdir()
        return subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                "--window-size=1280,1600",
                *extra,
                page,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=workdir,
        )

    dom = browse("dom", "--dump-dom").stdout
    assert "data-js-errors" not in dom, "a script raised an error in the page"
    assert dom.count('class="main-svg"') >= 2, "plotly drew no figure"
    assert "How does width change the optimal learning rate?" in dom
    shot = workdir / "shot.png"
    browse("shot", f"--screenshot={shot}")
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 500 and pixels.std() > 0.05, "the page rendered empty"


def test_every_trial_is_in_a_table_the_page_sorts_by_the_column_in_its_address(
    db: Path, workdir: Path
) -> None:
    from tests.conftest import browse

    assert _report("--study-name", "smoke", "--out", "out", "--no-dashboard") == 0
    page = (workdir / "out" / "report.html").resolve().as_uri()
    trials = optuna.load_study(study_name="smoke", storage=URL).get_trials()

    def rows(dom: str) -> list[list[str]]:
        table = dom.split('id="trials"')[1].split("</table>")[0]
        return [
            re.findall(r"<td[^>]*>([^<]*)</td>", row)
            for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
        ]

    as_written = rows(browse(page, workdir / "p0"))
    assert [int(r[1]) for r in as_written] == [t.number for t in trials]
    by_lr = rows(browse(page + "#sort=lr", workdir / "p1"))
    lrs = [float(r[3]) for r in by_lr]
    assert (
        len(by_lr) == len(trials)
        and lrs == sorted(lrs)
        and lrs != [float(r[3]) for r in as_written]
    )
    by_loss = rows(browse(page + "#sort=-value", workdir / "p2"))
    losses = [float(r[5]) for r in by_loss if r[5]]
    assert losses == sorted(losses, reverse=True) and len(losses) >= len(trials) // 2
    assert {r[4] for r in by_loss} <= {"complete", "pruned", "diverged"}


def test_real_dashboard_serves_the_saved_figure_and_note(db: Path, workdir: Path) -> None:
    import sys
    import urllib.request

    from tests.conftest import wait_until

    assert _report("--study-name", "smoke", "--out", "out") == 0
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen(
        [str(dashboard), URL, "--host", "127.0.0.1", "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return json.load(r)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"optuna-dashboard exited with {proc.returncode}")
        try:
            get("/api/studies")
            return True
        except OSError:
            return False

    try:
        wait_until(ready, 60, "optuna-dashboard to answer")
        summaries = get("/api/studies")["study_summaries"]
        study_id = next(s["study_id"] for s in summaries if s["study_name"] == "smoke")
        detail = get(f"/api/studies/{study_id}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "How the optimal learning rate shifts with width" in detail["note"]["body"]
    assert [g["id"] for g in detail["plotly_graph_objects"]] == SAVED_FIGURES
    assert len(detail["trials"]) == 18


def test_the_dashboard_command_prints_each_studys_own_address(db: Path, workdir: Path) -> None:
    """``python -m study.dashboard`` names each study's page; the real optuna-dashboard serves
    that page, and its API knows the study by the id in the address."""
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.dashboard", "--storage", URL, "--port", str(port)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # the header, then one per study
        address = {line.split()[0]: line.split()[1] for line in lines[1:]}
        assert set(address) == {"smoke", "other"}, lines
        study_id = address["smoke"].rsplit("/", 1)[1]

        def page_served() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(address["smoke"], timeout=5) as r:
                    return r.status == 200 and b"<html" in r.read().lower()
            except OSError:
                return False

        wait_until(page_served, 60, "the study's page")
        api = f"http://127.0.0.1:{port}/api/studies/{study_id}"
        with urllib.request.urlopen(api, timeout=5) as r:
            assert json.load(r)["name"] == "smoke"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _stored_importances(study: optuna.Study) -> dict[str, dict[str, float]]:
    """What Optuna's own evaluators give on the stored study, in this process."""
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    return {
        name: dict(optuna.importance.get_param_importances(study, evaluator=ev))
        for name, ev in (
            ("PED-ANOVA", PedAnovaImportanceEvaluator()),
            ("fANOVA", FanovaImportanceEvaluator(seed=0)),
        )
    }


def test_importances_from_the_second_process_are_those_of_the_stored_study(db: Path) -> None:
    study = load(URL, "smoke")
    expected = _stored_importances(study)
    assert set(expected["fANOVA"]) == {"width", "lr"}
    pending = report.PendingImportances(study)
    assert pending.result() == (expected, "")


def test_the_second_process_started_before_the_study_is_read_gets_its_trials(db: Path) -> None:
    """``python -m study.report`` starts it first, so that it imports scikit-learn while the
    study is read; the trials are sent to it afterwards."""
    pending = report.PendingImportances()
    with pytest.raises(RuntimeError):
        pending.result()  # nothing sent yet
    study = load(URL, "smoke")
    pending.compute(study)
    assert pending.result() == (_stored_importances(study), "")


def test_a_report_refused_before_its_study_is_read_leaves_no_second_process(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import multiprocessing

    assert _fails(capsys, "--storage", URL, "--study-name", "nope")
    assert multiprocessing.active_children() == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_the_second_process_ends_when_the_report_is_killed_before_sending_it_the_trials(
    workdir: Path,
) -> None:
    """A report killed (SIGKILL) between starting its importances' process and reading its
    study leaves no process behind: the child sees the pipe close, though, forked, it got copies
    of the parent's ends of it."""
    code = (
        "import os\nfrom study.report import PendingImportances\n"
        "p = PendingImportances()\nprint(p._proc.pid, flush=True)\nos._exit(0)\n"
    )
    # To a file, not a pipe: the child holds the pipe open too, so waiting for its end would
    # wait for the child.
    with open(workdir / "pid", "w") as f:
        subprocess.run([sys.executable, "-c", code], stdout=f, check=True, timeout=120)
    pid = int((workdir / "pid").read_text().split()[0])

    def ended() -> bool:  # gone, or a zombie left for init to reap
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

    wait_until(ended, 60, f"the importances' process {pid} to end")


def test_importances_are_computed_here_when_the_second_process_dies(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = load(URL, "smoke")
    monkeypatch.setattr(importances, "_importances_child", lambda *args: os._exit(3))
    pending = report.PendingImportances(study)
    proc = pending._proc
    assert proc is not None
    assert pending.result() == (_stored_importances(study), "")
    assert proc.exitcode == 3  # it did die: the result came from this process


def test_ctrl_c_stops_the_report_and_all_its_processes_with_one_line(db: Path) -> None:
    before = [(t.number, t.state, t.value) for t in load(URL, "smoke").trials]
    proc = subprocess.Popen(
        [sys.executable, "-m", "study.report", "--storage", URL, "--study-name", "smoke"],
        cwd=db.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    # Once the first PNG is written, it draws the others and writes the page. (Earlier, Ctrl-C
    # can land in a C extension's import, e.g. numpy.random's, which loses it: Python's doing.)
    first = db.parent / report.default_report_dir("smoke", URL) / "loss_vs_lr.png"
    wait_until(first.exists, 60, "loss_vs_lr.png")
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip() == "interrupted: run the same command again for a whole report"
    with pytest.raises(ProcessLookupError):  # none of its processes is left
        os.killpg(proc.pid, 0)
    assert [(t.number, t.state, t.value) for t in load(URL, "smoke").trials] == before


def test_a_report_stopped_on_the_way_stops_its_second_process(db: Path) -> None:
    pending = report.PendingImportances(load(URL, "smoke"))
    proc = pending._proc
    assert proc is not None
    pending.close()  # what an error or Ctrl-C before the importances are asked for does
    # Stopped, not waited for: fANOVA takes far longer than this test's few milliseconds.
    assert proc.exitcode == -signal.SIGTERM
