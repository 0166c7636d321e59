"""A password in a storage URL is never printed or stored, whatever its form and the flag's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote_plus

import optuna
import optuna_dashboard
import pytest
import sqlalchemy

from study import dashboard, report
from study._errors import UserError
from study.run import _parser as run_parser
from study.run import main as run_main
from study.storage import open_storage
from study.urls import mask_argv, mask_secrets, mask_text, mask_url, require_existing
from tests.conftest import load, postgres_url

SECRET = "S3cret"

# Every form a password takes in a URL, each holding SECRET (some percent-encoded).
SECRET_URLS = [
    "postgresql+psycopg://alice:S3cret@db.example:5432/optuna",
    "postgresql+psycopg://alice@db.example/optuna?password=S3cret",
    "postgresql+psycopg://alice@db.example/optuna?passwd=S3cret",
    "postgresql+psycopg://alice@db.example/optuna?sslmode=require&sslpassword=S3cret",
    "postgresql+psycopg://alice@db.example/optuna?PWD=S3cret",
    "postgresql+psycopg://alice@db.example/optuna?client_secret=S3cret",
    "postgresql+psycopg://alice@db.example/optuna?api_token=S3cret#top",
    "postgresql+psycopg://alice@db.example/optuna?%70assword=S3cret",  # %70 is "p"
    "postgresql+psycopg://alice@db.example/optuna?pass+word=S3cret",
    "postgresql+psycopg://alice:S3%63ret@db.example/optuna",  # %63 is "c"
    "postgresql+psycopg://alice@db.example/optuna?password=S3%63ret",
    "postgresql+psycopg://alice%3AS3cret@db.example/optuna",  # the colon itself encoded
    "postgresql+psycopg://alice@db.example/optuna?dsn=host%3Dh%20password%3DS3cret",
    "mysql://alice:S3cret@db.example/optuna?ssl_key=k&password=S3cret;token=S3cret",
    "sqlite:///studies.db?password=S3cret",
    "sqlite://alice:S3cret@/studies.db",
    "host=db.example user=alice password=S3cret",  # a DSN, not a URL
]

# URLs SQLAlchemy refuses: masked all the same.
UNPARSABLE_URLS = [
    "postgresql+psycopg://alice:S3cret@db.example:notaport/optuna",
    "postgresql+psycopg://alice:S3cret@db.example:notaport/optuna?password=S3cret",
    "postgresql+psycopg:alice:S3cret@db.example/optuna?password=S3cret",  # no "//"
]


def _hides(text: str, secret: str = SECRET) -> bool:
    """``text`` holds ``secret`` neither as written nor percent-decoded."""
    return secret not in text and secret not in unquote_plus(text)


@pytest.mark.parametrize("url", SECRET_URLS + UNPARSABLE_URLS)
def test_every_form_of_a_password_is_masked(url: str) -> None:
    masked = mask_url(url)
    assert _hides(masked), masked
    assert "***" in masked


@pytest.mark.parametrize("url", UNPARSABLE_URLS[:2])
def test_a_url_sqlalchemy_refuses_is_masked_too(url: str) -> None:
    with pytest.raises(ValueError):
        sqlalchemy.engine.make_url(url)
    assert mask_url(url).startswith("postgresql+psycopg://alice:***@")


def test_several_secrets_in_one_url_are_all_masked_and_the_rest_is_kept() -> None:
    url = "postgresql+psycopg://alice:S3cret@db.example:5432/optuna?sslmode=require&password=pw2"
    url += ";sslpassword=pw3&application_name=study"
    assert mask_url(url) == (
        "postgresql+psycopg://alice:***@db.example:5432/optuna?sslmode=require&password=***"
        ";sslpassword=***&application_name=study"
    )


def test_a_password_holding_at_and_slash_is_masked_to_its_last_at() -> None:
    # SQLAlchemy would send "cr/et@db.example" as the host: no part of it may show.
    assert mask_url("postgresql://alice:S3@cr/et@db.example/optuna") == (
        "postgresql://alice:***@db.example/optuna"
    )


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///studies.db",
        "sqlite:////abs/path/studies.db",
        "postgresql+psycopg://alice@db.example:5432/optuna?sslmode=require&connect_timeout=5",
        "postgresql+psycopg://db.example/optuna",
    ],
)
def test_a_url_without_secrets_is_kept_as_written(url: str) -> None:
    assert mask_url(url) == url


@pytest.mark.parametrize(
    "spelling",
    [
        ["--storage", "{url}"],
        ["--storage={url}"],
        ["--stor", "{url}"],  # argparse's abbreviations
        ["--stora={url}"],
    ],
)
def test_argv_is_masked_however_the_storage_flag_is_spelled(spelling: list[str]) -> None:
    url = "postgresql+psycopg://alice:S3cret@db.example/optuna?sslpassword=S3cret"
    argv = ["--trials", "3", *(a.format(url=url) for a in spelling), "--study-name", "s"]
    assert run_parser().parse_args(argv).storage == url  # the spelling is a real one
    masked = mask_argv(argv)
    assert _hides(" ".join(masked))
    assert masked[2].startswith(spelling[0].split("{")[0])  # "--stora=" is kept
    assert masked[:2] == ["--trials", "3"] and masked[-2:] == ["--study-name", "s"]


@pytest.mark.parametrize("spelling", [["--compare-storage", "{url}"], ["--compare-s={url}"]])
def test_argv_of_the_report_masks_the_compare_storage(spelling: list[str]) -> None:
    url = "postgresql+psycopg://alice@db.example/optuna?password=S3cret"
    argv = ["--compare", "other", *(a.format(url=url) for a in spelling)]
    assert report._parser().parse_args(argv).compare_storage == url
    assert _hides(" ".join(mask_argv(argv)))


def test_a_stored_command_line_is_masked_word_by_word() -> None:
    command = (
        "python -m study.run --trials 3 --storage "
        "'postgresql+psycopg://alice@db.example/optuna?password=S3cret&sslmode=require'"
    )
    masked = mask_text(command)
    assert _hides(masked)
    assert masked.startswith("python -m study.run --trials 3 --storage 'postgresql+psycopg://")


def test_a_drivers_message_loses_the_secrets_of_the_url_it_was_given() -> None:
    url = "postgresql+psycopg://alice:S3%63ret@db.example/optuna?sslpassword=Other9"
    message = "connect failed: password S3cret, sslpassword Other9, url " + url
    masked = mask_secrets(message, url)
    assert _hides(masked) and _hides(masked, "Other9")


@pytest.mark.parametrize(
    "call",
    [
        lambda: open_storage("postgresql+psycopg://alice:S3cret@db.example:notaport/optuna"),
        lambda: open_storage("nosuchdialect://alice:S3cret@db.example/optuna?password=S3cret"),
        lambda: open_storage("sqlite://alice:S3cret@/studies.db?password=S3cret"),
        lambda: require_existing("postgresql://alice:S3cret@db.example:notaport/optuna"),
        lambda: require_existing("sqlite:///missing.db?password=S3cret"),
    ],
)
def test_user_errors_about_a_storage_quote_it_masked(
    workdir: Path, call: Callable[[], object]
) -> None:
    with pytest.raises(UserError) as e:
        call()
    assert _hides(str(e.value)), str(e.value)
    assert "***" in str(e.value)


@pytest.mark.parametrize(
    ("main", "argv"),
    [
        (run_main, ["--st=postgresql://alice:S3cret@db.example/optuna"]),  # ambiguous
        (run_main, ["--storage", "x", "--bogus=sqlite:///s.db?password=S3cret"]),
        (report.main, ["--st=postgresql://alice:S3cret@db.example/optuna"]),
        (dashboard.main, ["--storage-url=postgresql://alice:S3cret@db.example/optuna"]),
    ],
)
def test_argparse_errors_echo_a_mistyped_flag_masked(
    main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "***" in err and _hides(err), err


def _stored_text(study: optuna.Study) -> str:
    """Everything a study stores beside its numbers: its attrs and its trials' attrs."""
    parts: list[object] = [study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
    for t in study.get_trials(deepcopy=False):
        parts += [t.user_attrs, t.system_attrs]
    return json.dumps(parts, default=str)


def test_a_run_prints_and_stores_no_password_of_its_storage_url(
    workdir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    url = "sqlite:///s.db?password=S3cret&sslpassword=S3cret"  # SQLite ignores both
    argv = ["--space", "smoke", "--trials", "3", "--workers", "1", "--report-dir", "rep"]
    assert run_main([*argv, f"--stora={url}", "--study-name", "s"]) == 0
    out, err = capfd.readouterr()
    assert _hides(out + err), out + err
    assert "storage:   sqlite:///s.db?password=***&sslpassword=***" in out
    assert "--storage 'sqlite:///s.db?password=***&sslpassword=***'" in out  # the resume line
    study = load("sqlite:///s.db", "s")
    assert "--stora=sqlite:///s.db?password=***&sslpassword=***" in study.user_attrs["command"]
    assert "How the optimal learning rate" in optuna_dashboard.get_note(study)  # the note is saved
    assert _hides(_stored_text(study))
    for path in [*workdir.glob("s.db*"), *(workdir / "rep").iterdir()]:
        assert SECRET.encode() not in path.read_bytes(), path


def test_the_report_masks_both_storages_and_a_password_stored_by_an_older_version(
    workdir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = ["--space", "smoke", "--trials", "3", "--workers", "1", "--quiet", "--no-report"]
    assert run_main([*run, "--storage", "sqlite:///r.db", "--study-name", "a"]) == 0
    assert run_main([*run, "--storage", "sqlite:///r.db", "--study-name", "b"]) == 0
    leaky = "python -m study.run --storage postgresql+psycopg://alice:S3cret@db.example/optuna"
    # Closed before the report: a storage of this process left open over a report makes the
    # next open of the file fail with "disk I/O error" (an issue of its own).
    storage = open_storage("sqlite:///r.db", heartbeat_s=None)
    optuna.load_study(study_name="a", storage=storage).set_user_attr("command", leaky)
    storage.engine.dispose()
    capfd.readouterr()
    argv = ["--stor=sqlite:///r.db?password=S3cret", "--study-name", "a", "--bootstrap", "100"]
    argv += ["--compare", "b", "--compare-storage", "sqlite:///r.db?token=S3cret", "--out", "o"]
    assert report.main(argv) == 0
    out, err = capfd.readouterr()
    assert _hides(out + err), out + err
    note = optuna_dashboard.get_note(load("sqlite:///r.db", "a"))
    assert "study.report --storage 'sqlite:///r.db?password=***'" in note
    assert "postgresql+psycopg://alice:***@db.example/optuna" in note
    assert _hides(note)
    for path in (workdir / "o").iterdir():
        assert SECRET.encode() not in path.read_bytes(), path
    missing = ["--storage", "sqlite:///nothere.db?password=S3cret", "--compare", "b"]
    assert report.main(missing) == 2
    err = capfd.readouterr().err
    assert "error: storage sqlite:///nothere.db?password=***: no such database file" in err


def test_a_password_in_the_query_reaches_postgresql_and_nothing_printed_or_stored_holds_it(
    capfd: pytest.CaptureFixture[str], workdir: Path
) -> None:
    server = sqlalchemy.engine.make_url(postgres_url())
    password = server.password or ""
    # The password moves from user:password@ to ?password=; sslpassword is a second secret the
    # driver accepts and ignores (it decrypts a client key, and there is none).
    url = server.set(password=None).render_as_string(hide_password=False)
    url += ("&" if server.query else "?") + f"password={quote(password, safe='')}"
    url += "&sslpassword=Ssl5ecretQ"
    name = f"secrets-{uuid.uuid4().hex[:8]}"
    argv = ["--space", "smoke", "--trials", "2", "--workers", "1", "--no-report"]
    assert run_main([*argv, "--storage", url, "--study-name", name]) == 0
    out, err = capfd.readouterr()
    stored = _stored_text(optuna.load_study(study_name=name, storage=url))
    for text in (out + err, stored):
        assert "password=***" in text and _hides(text, "Ssl5ecretQ")
        assert f"password={quote(password, safe='')}" not in text
        if password not in mask_url(url):  # (a password that is also the user's name shows)
            assert _hides(text, password)
    optuna.delete_study(study_name=name, storage=url)
