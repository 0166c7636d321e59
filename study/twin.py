"""SP against μP in one command: ``python -m study.run --space gpt_code --twin``.

The space's *twin* is the same space under the other parametrization (SP <-> μP), everything
else equal, named ``NAME_mup`` (or, for a μP space named ``NAME_mup``, ``NAME``; else
``NAME_sp``). :func:`run_twin` runs the space's study, then its twin's, on one storage with the
same workers, target and seed; the same command again resumes whichever is unfinished. Then one
report puts the two side by side.

At the base width μP is SP exactly, so with one worker (a seeded study replays exactly) the
two studies' base-width trials are the same trials: same lrs, same losses. The comparison
checks it (:func:`base_width_check`) and says how many agree; with several workers the trials'
order, and so the lrs drawn, may differ, and it says that instead.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from study.analysis import headline
from study.api import RunResult, run_study
from study.names import LR, SPACE, WIDTH, is_verification
from study.report import default_report_dir, make_report
from study.space import Space, space_from_dict
from study.storage import DEFAULT_STORAGE

__all__ = ["base_width_check", "run_twin", "twin_of"]


def twin_of(space: Space) -> Space:
    """``space`` under the other parametrization, with its twin's name."""
    other = "sp" if space.model.parametrization == "mup" else "mup"
    if other == "sp" and space.name.endswith("_mup"):
        name = space.name[: -len("_mup")]
    else:
        name = f"{space.name}_{other}"
    # muP names its base width (the narrowest by default); SP has none: the twin of the twin is
    # the space again, and the shipped NAME and NAME_mup spaces are each other's twins.
    base = space.model.base_width_for(min(space.model.widths)) if other == "mup" else None
    model = dataclasses.replace(space.model, parametrization=other, base_width=base)
    return dataclasses.replace(space, name=name, model=model)


def base_width_check(a: optuna.Study, b: optuna.Study, base: int) -> tuple[int, int]:
    """How many of the base width's finished trials are the same trial in both studies (same
    number, lr and value, to 1e-9), of how many."""

    def at_base(study: optuna.Study) -> dict[int, tuple[float, float | None]]:
        return {
            t.number: (t.params[LR], t.value)
            for t in study.get_trials(
                deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)
            )
            if t.params.get(WIDTH) == base and not is_verification(t)
        }

    ta, tb = at_base(a), at_base(b)
    same = 0
    for number, (lr, value) in ta.items():
        other = tb.get(number)
        if other is None or not math.isclose(lr, other[0], rel_tol=1e-9):
            continue
        if (value is None) == (other[1] is None) and (
            value is None or math.isclose(value, other[1], rel_tol=1e-6)  # type: ignore[arg-type]
        ):
            same += 1
    return same, max(len(ta), len(tb))


def run_twin(**kwargs: Any) -> tuple[RunResult, RunResult | None]:
    """The study of ``kwargs['space']`` and then its twin's (:func:`run_study`'s arguments),
    and one report of both. Returns both runs (the twin's None when the first did not end at 0).
    """
    report = kwargs.pop("report", True)
    report_dir = kwargs.pop("report_dir", None)
    quiet = kwargs.get("quiet", False)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    storage = kwargs.get("storage") or DEFAULT_STORAGE
    first = run_study(**kwargs, report=False, live=report)  # the report: both, at the end
    if first.status != 0:
        return first, None
    space = space_from_dict(first.study.user_attrs[SPACE])
    twin = twin_of(space)
    name = kwargs.get("study_name")
    say("")
    say(f"twin:      {twin.name}, the same space under {twin.model.parametrization}")
    second = run_study(
        **{
            **kwargs,
            "space": twin,
            "study_name": f"{name}_{twin.model.parametrization}" if name else None,
        },
        report=False,
        live=report,
    )
    if second.status != 0 or not report:
        return first, second
    out = (
        Path(report_dir)
        if report_dir
        else default_report_dir(f"{first.study.study_name}_twin", storage)
    )
    reps = make_report(first.study, out, storage, [second.study])
    base = space.model.base_width_for(min(space.model.widths))
    same, of = base_width_check(first.study, second.study, base)
    say("")
    for rep in reps:
        say(headline(rep.fit, rep.name))
    if same == of:
        say(f"base width {base}: all {of} trials the same in both studies, as they must be")
    else:
        say(
            f"base width {base}: {same} of {of} trials the same in both studies (with several "
            "workers the trials' order, and so their lrs, may differ; --workers 1 replays them)"
        )
    say(f"report:    {out}/report.html (side by side)")
    return first, second
