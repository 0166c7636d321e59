"""Parameter importances of a study (PED-ANOVA and fANOVA), computed in a second process.

fANOVA needs scikit-learn (1.4 s to import) and seconds of computing: the report starts this
process before it reads its study, so the import runs meanwhile, and sends it the trials.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from study.names import is_verification

__all__ = ["Importances", "PendingImportances", "importances_of"]


Importances = tuple[dict[str, dict[str, float]], str]


def importances_of(trials: Sequence[FrozenTrial], direction: StudyDirection) -> Importances:
    """PED-ANOVA and fANOVA importances of width and lr over the COMPLETE ``trials``.

    Computed on an in-memory copy of those trials (what both evaluators read of a study), so that
    another process can compute them without the study's storage. Returns the importances by
    evaluator and a note naming any evaluator that could not compute them.
    """
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    storage = optuna.storages.InMemoryStorage()
    copy = optuna.Study(
        storage.get_study_name_from_id(storage.create_new_study([direction])), storage
    )
    copy.add_trials(
        [t for t in trials if t.state == TrialState.COMPLETE and not is_verification(t)]
    )
    out: dict[str, dict[str, float]] = {}
    notes = []
    for name, ev in (
        ("PED-ANOVA", PedAnovaImportanceEvaluator()),
        ("fANOVA", FanovaImportanceEvaluator(seed=0)),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[name] = dict(optuna.importance.get_param_importances(copy, evaluator=ev))
        except (ValueError, RuntimeError) as e:
            notes.append(f"{name}: {str(e).splitlines()[0]}")
    return out, "; ".join(notes)


def _importances_child(
    requests: Connection, results: Connection, parent_ends: tuple[Connection, ...] = ()
) -> None:
    """The second process: import the evaluators (scikit-learn: 1.4 s) while the report reads
    its study, then compute the importances of the trials it is sent and send them back.

    ``parent_ends``: the parent's ends of both pipes, which a forked child holds copies of;
    closed here, so that a parent killed before it sends the trials ends this process (EOF).
    """
    for conn in parent_ends:
        conn.close()
    # Ctrl-C reaches this process too: the parent alone handles it, and stops this one.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # as in the parent (a spawned child)
    received: list[Any] = []

    def receive() -> None:  # at once, so that the parent's send never waits for the import
        with contextlib.suppress(EOFError, OSError):  # the parent stopped before sending
            received.append(requests.recv())

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    importlib.import_module("optuna.importance")

    reader.join()
    if not received:
        return
    result = importances_of(*received[0])
    with contextlib.suppress(BrokenPipeError):  # the parent is gone (killed): nobody to tell
        results.send(result)
    results.close()


class PendingImportances:
    """A study's importances, computed in a second process while this one draws the rest.

    fANOVA is most of a report's time (importing scikit-learn, then its forest's variances),
    and the rest of the report needs none of it. The process is forked on Linux, spawned
    elsewhere, and can start before the study is read (``PendingImportances()``, then
    :meth:`compute`): it imports scikit-learn meanwhile. It touches no storage: it is sent the
    trials and sends back only the result. Where no process can be started, or it dies,
    :meth:`result` computes them here.
    """

    def __init__(self, study: optuna.Study | None = None) -> None:
        self._args: tuple[list[FrozenTrial], StudyDirection] | None = None
        self._result: Importances | None = None
        self._proc: BaseProcess | None = None
        self._send: Connection | None = None
        self._conn: Connection | None = None
        ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        try:
            requests, self._send = ctx.Pipe(duplex=False)
            self._conn, results = ctx.Pipe(duplex=False)
            self._proc = ctx.Process(
                target=_importances_child,
                args=(requests, results, (self._send, self._conn)),
                daemon=True,
            )
            self._proc.start()
            requests.close()
            results.close()
        except OSError:  # no process to be had here
            self.close()
        if study is not None:
            self.compute(study)

    def compute(self, study: optuna.Study) -> None:
        """Send the study's trials to the second process (once)."""
        self._args = (study.get_trials(deepcopy=False), study.direction)
        if self._send is not None:
            with contextlib.suppress(OSError):  # it died: computed here when asked
                self._send.send(self._args)
            self._send.close()
            self._send = None

    def result(self) -> Importances:
        """The importances (waited for the first time, then kept)."""
        if self._args is None:
            raise RuntimeError("PendingImportances.result() before compute(study)")
        if self._result is None:
            try:
                if self._conn is not None:
                    with contextlib.suppress(EOFError):  # the process died before sending them
                        self._result = self._conn.recv()
                if self._result is None:  # compute them here
                    self._result = importances_of(*self._args)
            finally:
                self.close()
        return self._result

    def close(self) -> None:
        """Stop the process if its result was never asked for (an error on the way)."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.terminate()
            self._proc.join()
            self._proc = None
        for conn in (self._send, self._conn):
            if conn is not None:
                conn.close()
        self._send = self._conn = None
