"""A study name is never a path: a report without --out lands in reports/ of the current folder."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import optuna
import pytest

from study import report
from study.report import default_report_dir
from study.run import main as run_main

# Names Optuna stores as they are, and that would leave reports/ if used as a path.
PATH_LIKE_NAMES = ["/tmp/x", "../../x", ".hidden", "a/b", "é x y", "", ".", "..", "a" * 300]


@pytest.mark.parametrize("name", PATH_LIKE_NAMES)
def test_the_default_report_folder_is_one_safe_folder_inside_reports(name: str) -> None:
    out = default_report_dir(name)
    assert out.parent == Path("reports") and not out.is_absolute()
    assert re.fullmatch(r"[A-Za-z0-9._-]+", out.name), out.name
    assert not out.name.startswith(".") and len(out.name.encode()) <= 255
    assert (Path.cwd() / out).resolve().parent == (Path.cwd() / "reports").resolve()


@pytest.mark.parametrize("name", ["mlp_digits", "smoke", "cnn_digits-mup.v2", "run-2"])
def test_a_name_that_is_already_a_safe_folder_name_is_kept(name: str) -> None:
    assert default_report_dir(name) == Path("reports") / name


def test_two_different_names_never_share_a_folder() -> None:
    hashed = hashlib.sha256(b"a/b").hexdigest()[:10]
    names = ["a/b", "a_b", "a?b", "a b", "a\\b", f"a_b-{hashed}", ".a_b", "_a_b", "", ".", ".."]
    names += ["é", "è", "a" * 300, "a" * 301, "x-0123456789", "x-0123456789 "]
    folders = [default_report_dir(n) for n in names]
    assert len(set(folders)) == len(names), folders


@pytest.fixture
def deep_cwd(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current folder three levels under the test's own, so "../../x" stays inside it."""
    cwd = workdir / "a" / "b" / "c"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    return cwd


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_a_run_named_as_a_path_writes_its_report_under_reports_here(
    workdir: Path, deep_cwd: Path
) -> None:
    name = str(workdir / "elsewhere")  # an absolute path, inside this test's folder
    args = ["--space", "smoke", "--trials", "3", "--workers", "1", "--quiet"]
    assert run_main([*args, "--storage", "sqlite:///s.db", "--study-name", name]) == 0
    written = _files(workdir) - {deep_cwd / "s.db", deep_cwd / "s.db-wal", deep_cwd / "s.db-shm"}
    assert written and all(p.parent.parent == deep_cwd / "reports" for p in written), written
    assert (deep_cwd / default_report_dir(name, "sqlite:///s.db") / "report.html").is_file()
    assert not (workdir / "elsewhere").exists()


@pytest.mark.parametrize("name", ["../../x", "/tmp/width-lr-study-x"])
def test_a_stored_study_named_as_a_path_gets_its_report_under_reports_here(
    workdir: Path, deep_cwd: Path, name: str
) -> None:
    args = ["--space", "smoke", "--trials", "3", "--workers", "1", "--quiet", "--no-report"]
    assert run_main([*args, "--storage", "sqlite:///s.db", "--study-name", name]) == 0
    before = _files(workdir)
    assert report.main(["--storage", "sqlite:///s.db", "--bootstrap", "100"]) == 0
    written = _files(workdir) - before
    written -= {deep_cwd / "s.db-wal", deep_cwd / "s.db-shm"}
    assert written and all(p.parent.parent == deep_cwd / "reports" for p in written), written
    assert (deep_cwd / default_report_dir(name, "sqlite:///s.db") / "report.html").is_file()
    assert not (workdir / "a" / "x").exists() and not Path(name).is_dir()
    assert optuna.get_all_study_names("sqlite:///s.db") == [name]  # the name itself is kept
    assert os.listdir(deep_cwd / "reports") == [default_report_dir(name, "sqlite:///s.db").name]


def test_two_studies_of_one_name_in_two_storages_leave_two_reports_naming_their_storage(
    workdir: Path,
) -> None:
    import json

    for db in ("a.db", "b.db"):
        args = ["--space", "smoke", "--trials", "3", "--storage", f"sqlite:///{db}"]
        assert run_main([*args, "--workers", "1", "--quiet"]) == 0
    fits = sorted((workdir / "reports").glob("*/fit.json"))
    assert len(fits) == 2
    storages = set()
    for fit in fits:
        origin = json.loads(fit.read_text())["provenance"]
        storages.add(Path(origin["storage"].removeprefix("sqlite:///")).name)
        assert origin["study"] == "smoke" and sum(origin["trials"].values()) >= 3
        assert origin["space_fingerprint"] and origin["tool_version"] and origin["written"]
        assert origin["storage"] in (fit.parent / "report.html").read_text()
    assert storages == {"a.db", "b.db"}
