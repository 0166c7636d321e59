from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]

# The Ctrl-C tests send SIGINT to the runs they start, as a terminal does. A shell that starts
# pytest in the background (`pytest &`, `nohup pytest &`) makes it ignore SIGINT, every process
# it starts inherits that, and Python then installs no KeyboardInterrupt handler: those runs
# would never see the Ctrl-C. Give SIGINT back its default, as a terminal's shell does.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh current folder: the default SQLite file lands here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def db_digest(path: Path) -> str:
    """Hash of a SQLite storage: the file and its write-ahead log (what holds data).

    A missing and an empty WAL are the same database (SQLite creates an empty one when a
    reader opens a WAL-mode file); the -shm file is an index rebuilt from the WAL, not data.
    """
    wal = Path(f"{path}-wal")
    wal_bytes = wal.read_bytes() if wal.exists() else b""
    return f"{sha256(path)}|{hashlib.sha256(wal_bytes).hexdigest()}"


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def write_space(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def spawn(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``python -m study.run ARGS`` as its own process (for kill and Ctrl-C tests), one
    worker unless ARGS say otherwise; ``env`` is added to the environment."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen(
        [sys.executable, "-m", "study.run", "--workers", "1", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition (not a sleep on a guess); fail the test with ``what`` on time-out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def fault_env(spec: str, token: Path) -> dict[str, str]:
    """The environment that makes a run take a fault at a known point (see study._faults):
    e.g. ``kill@3`` kills the first process that stores a trial's epoch 3."""
    from study._faults import FAULT_ENV, TOKEN_ENV

    return {FAULT_ENV: spec, TOKEN_ENV: str(token)}


def fault_taken(token: Path, proc: subprocess.Popen, timeout_s: float = 300) -> tuple[int, int]:
    """Wait until a process of the run ``proc`` took the fault; its pid and trial number.

    The process writes its line only after storing its trial's curve, and signals itself after.
    """

    def said() -> bool:
        if token.is_file() and token.read_text().endswith("\n"):
            return True
        if proc.poll() is not None:
            raise AssertionError("the run ended before the fault:\n" + proc.stdout.read())
        return False

    wait_until(said, timeout_s, "a process to take the fault")
    pid, number = token.read_text().split()
    return int(pid), int(number)


# A space whose trials take long enough to be killed or interrupted in the middle.
SLOW_SPACE = """
[model]
widths = [64, 128]
[lr]
low = 1e-4
high = 1e-2
[training]
epochs = 60
batch_size = 32
[pruner]
name = "none"
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_url() -> str:
    """The test PostgreSQL server's URL (.ci/run starts one); skips the test where there is none,
    fails it where REQUIRE_POSTGRES says there must be one."""
    url = os.environ.get("STUDY_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail("REQUIRE_POSTGRES is set but STUDY_TEST_POSTGRES_URL is not")
        pytest.skip("no PostgreSQL server: set STUDY_TEST_POSTGRES_URL (.ci/run starts one)")
    return url


class Dashboard:
    """A real optuna-dashboard process on ``url``, answering at ``base``."""

    def __init__(self, url: str, cwd: Path, port: int) -> None:
        import json
        import urllib.request

        self._json, self._urlopen = json, urllib.request.urlopen
        self.base = f"http://127.0.0.1:{port}"
        exe = Path(sys.executable).parent / "optuna-dashboard"
        self.proc = subprocess.Popen(
            [str(exe), url, "--host", "127.0.0.1", "--port", str(port)],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited with {self.proc.returncode}")
            try:
                self.get("/api/studies")
                return True
            except OSError:
                return False

        wait_until(ready, 60, "optuna-dashboard to answer")

    def get(self, path: str) -> dict:
        with self._urlopen(self.base + path, timeout=5) as r:
            return self._json.load(r)

    def study(self, name: str) -> dict:
        """The study's page data as the dashboard's browser app gets it (note, figures, trials)."""
        summaries = self.get("/api/studies")["study_summaries"]
        study_id = next(s["study_id"] for s in summaries if s["study_name"] == name)
        return {"study_id": study_id, **self.get(f"/api/studies/{study_id}")}

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def dashboard() -> Iterator[Callable[[str, Path], Dashboard]]:
    """Start a real optuna-dashboard on a storage: ``dashboard(url, cwd)``; stopped after."""
    started: list[Dashboard] = []

    def start(url: str, cwd: Path) -> Dashboard:
        started.append(Dashboard(url, cwd, free_port()))
        return started[-1]

    yield start
    for d in started:
        d.close()


# Headless Chromium as the tests start it: no network of its own, nothing kept between starts.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def find_chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found and os.environ.get("REQUIRE_CHROMIUM"):
        pytest.fail("REQUIRE_CHROMIUM is set but chromium is not installed")
    return found


def browse(url: str, profile: Path, *extra: str, window: str = "1400,3000") -> str:
    """The DOM of ``url`` after Chromium has run its scripts (a real browser, headless; skips
    the test where there is none, fails it where REQUIRE_CHROMIUM says there must be one)."""
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed (Debian package 'chromium'); .ci/run installs it")
    profile.mkdir(parents=True)
    return subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=15000",
            f"--window-size={window}",
            "--dump-dom",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
