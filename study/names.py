"""The names a study stores, defined once: its parameters, and the attrs of its trials and of
itself that more than one module reads or writes."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BEST_VAL_LOSS",
    "COMMAND",
    "DIVERGED",
    "EPOCHS_RUN",
    "LR",
    "METRIC",
    "SPACE",
    "SPACE_FINGERPRINT",
    "SURPLUS",
    "WIDTH",
    "WORKER",
    "ANSWER",
    "VERIFY_INDEX",
    "VERIFY_WIDTH",
    "is_verification",
]

# A trial's parameters.
WIDTH = "width"
LR = "lr"

# A trial's user attrs (the run's record; study.objective.Objective.end writes them all).
BEST_VAL_LOSS = "best_val_loss"  # the lowest validation loss over the epochs run
DIVERGED = "diverged"  # True: its loss went NaN/inf or far above the initial one
EPOCHS_RUN = "epochs_run"

# A trial's system attrs.
SURPLUS = "surplus"  # failed before training: it lost a race for a slot
WORKER = "worker"  # host:pid of the process that ran it

# The name of a study's value: the best validation loss a trial reached.
METRIC = "validation loss"

# The study's user attrs.
SPACE = "space"  # the full space (Space.to_dict()): what a resume runs on
SPACE_FINGERPRINT = "space_fingerprint"
COMMAND = "command"  # the command line that made it, passwords masked
# The scaling fit as it stands while the study runs (study.live.Answer as a dict): workers read
# it to stop once the answer is good enough (--until-ci).
ANSWER = "answer_so_far"

# A trial run by ``python -m study.predict --verify`` at a width beyond the study's: stored in
# the study, never fitted, never counted toward --trials (the width it verifies, its index).
VERIFY_WIDTH = "verify_width"
VERIFY_INDEX = "verify_index"


def is_verification(trial: Any) -> bool:
    """A trial of ``study.predict --verify`` (a FrozenTrial or anything with user_attrs)."""
    return VERIFY_WIDTH in trial.user_attrs
