"""Each command explains itself: every flag has help showing its default, --version, one
program name, no markup."""

from __future__ import annotations

import importlib
import re
from importlib.metadata import version

import pytest

COMMANDS = ["study.run", "study.report", "study.dashboard", "study.coordcheck", "study.predict"]
# Flags that are off unless given: their help says what they turn on.
SWITCHES = {
    "-h",
    "--version",
    "--no-report",
    "--quiet",
    "--allow-remote",
    "--no-dashboard",
    "--twin",
}


def _help(module: str, capsys: pytest.CaptureFixture[str], flag: str) -> str:
    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main([flag])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("module", COMMANDS)
def test_every_flag_has_help_that_shows_its_default(
    module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = _help(module, capsys, "--help")
    assert text.startswith(f"usage: python -m {module} ")
    assert "``" not in text and "\n\n" in text  # a description, plain text
    options = text.split("options:\n", 1)[1]
    entries = re.split(r"\n(?=  -)", options.strip("\n"))
    assert len(entries) >= 4
    for entry in entries:
        flag = entry.split()[0].rstrip(",")
        words = " ".join(entry.split()[1:])
        # Its own words: less the metavar (upper case, or {choices}) and the default shown.
        own = re.sub(r"\{[^}]*\}|\(default:[^)]*\)|\b[A-Z_]+\b", "", words)
        assert re.search(r"[a-z]{3,}", own), f"{module} {flag} has no help"
        if flag not in SWITCHES:
            assert "default" in words or "(required)" in words, f"{module} {flag}: {words}"


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_says_its_version(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _help(module, capsys, "--version").strip() == (
        f"python -m {module} {version('width-lr-study')}"
    )
