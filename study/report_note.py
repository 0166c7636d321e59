"""What a report says in words: the note it saves into the study for optuna-dashboard
(Markdown, escaped so it renders as written) and its provenance (where it comes from)."""

from __future__ import annotations

import html
import re
import shlex
import time
from typing import Any

from study._version import git_commit, tool_version
from study.analysis import StudyReport, headline, in_plain_words
from study.extrapolate import extrapolation_words
from study.interaction import INTERACTION, variance_shares
from study.names import COMMAND, SPACE, SPACE_FINGERPRINT
from study.urls import mask_text, mask_url

__all__ = ["note_markdown", "provenance", "provenance_html"]


def _md(text: str) -> str:
    """``text`` as Markdown shows it as written (``lr*`` would open an emphasis)."""
    return re.sub(r"([\\`*_|\[\]<>])", r"\\\1", text)


def note_markdown(
    rep: StudyReport, storage_url: str, live: tuple[int, int | None] | None = None
) -> str:
    """The note for optuna-dashboard. ``live``: (finished, target) while the study runs."""
    fit = rep.fit
    lines = [
        "## How the optimal learning rate shifts with width",
        "",
    ]
    if live is not None:
        finished, target = live
        of = f" of {target}" if target else ""
        lines += [
            f"*So far, from {finished}{of} finished trials while the study runs "
            f"(updated {time.strftime('%H:%M:%S')}); the report at the end replaces it.*",
            "",
        ]
    lines += [
        f"**{_md(in_plain_words(fit) or headline(fit, rep.name))}**",
        "",
        _md(headline(fit, rep.name)),
        "",
    ]
    if fit.note:
        lines += [f"> {_md(fit.note)}", ""]
    if shares := variance_shares(rep.points):
        parts = ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
        lines += [
            _md(
                f"What moves the loss (shares of its variation between cells): {parts}. "
                f"The {INTERACTION} share is lr* moving with width."
            ),
            "",
        ]
    if words := extrapolation_words(fit):
        lines += [_md(words), ""]
    lines += [
        "| width | lr* | interval | best loss | trials | complete | pruned | diverged | edge |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in fit.widths:
        interval = f"[{e.lr_low:.3g}, {e.lr_high:.3g}]" if e.lr_low is not None else "-"
        lr_star = f"{e.lr_star:.3g}" if e.lr_star is not None else "-"
        best = f"{e.best_value:.3g}" if e.best_value is not None else "-"
        lines.append(
            f"| {e.width} | {lr_star} | {interval} | {best} "
            f"| {e.trials} | {e.complete} | {e.pruned} | {e.diverged} | {e.edge or 'no'} |"
        )
    space = rep.study.user_attrs.get(SPACE)
    # Masked again: a study stored by an older version may hold the password in its command.
    command = mask_text(rep.study.user_attrs.get(COMMAND, "python -m study.run ..."))
    lines += [
        "",
        "Method: " + fit.settings.get("estimator", "") + "; pruned and diverged trials "
        "are counted but not fitted.",
        "",
        "Reproduce:",
        "```",
        command,
        shlex.join(
            ["python", "-m", "study.report", "--storage", mask_url(storage_url)]
            + ["--study-name", rep.name]
        ),
        "```",
    ]
    if space:
        lines += [
            "",
            f"Space fingerprint `{rep.study.user_attrs.get('space_fingerprint', '')}`: "
            f"widths {space['model']['widths']}, "
            f"lr {space['lr']['low']:g}..{space['lr']['high']:g}, "
            f"{space['optimizer']['name']}, {space['training']['epochs']} epochs"
            + (
                f", matmul precision {precision}."
                if (precision := space["training"].get("matmul_precision", "highest")) != "highest"
                else "."
            ),
        ]
    return "\n".join(lines)


def provenance(rep: StudyReport, storage_url: str) -> dict[str, Any]:
    """Where a report comes from: its storage (password masked), study, trials by state, space
    fingerprint, when it was written and by which version of the tool (and git commit)."""
    states = [t.state.name.lower() for t in rep.study.get_trials(deepcopy=False)]
    return {
        "storage": mask_url(storage_url),
        "study": rep.name,
        "trials": {s: states.count(s) for s in sorted(set(states))},
        "space_fingerprint": rep.study.user_attrs.get(SPACE_FINGERPRINT),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tool_version": tool_version(),
        "git_commit": git_commit(),
    }


def provenance_html(p: dict[str, Any]) -> str:
    trials = ", ".join(f"{n} {s}" for s, n in p["trials"].items())
    parts = [
        f"storage {p['storage']}",
        f"study {p['study']}",
        f"trials: {trials}",
        f"space {p['space_fingerprint'] or '(none stored)'}",
        f"written {p['written']}",
        f"width-lr-study {p['tool_version']}"
        + (f" (commit {p['git_commit'][:12]})" if p["git_commit"] else ""),
    ]
    return "<p class='provenance'>" + html.escape(" · ".join(parts)) + "</p>"
