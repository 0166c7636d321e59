"""Run live studies of one or more spaces (pruner settings) and compare each run's answer with an
unpruned reference study: what a setting costs and how far it moves each width's lr*, as the
sampler reacts to it (which a replay, scripts/pruner_replay.py, cannot show).

    python scripts/pruner_live.py --reference sqlite:///bench/reference.db \
        --reference-name mlp_digits_nopruning --runs 3 mlp_digits my_candidate.toml

Each run is ``python -m study.run --space SPACE --trials N`` with the tool's defaults (one
process per core), in a fresh study of its own in ``--out``; the spaces take turns, so a drift
of the machine's speed is spread over them. Prints one line per run and writes ``live.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from bench import inside_interval, lr_star_moves, study_facts

from study.space import load_space, resolve_space_path


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/pruner_live.py", description=__doc__)
    p.add_argument("spaces", nargs="+", help="space names or TOML paths to run")
    p.add_argument("--reference", required=True, help="storage URL of an unpruned study")
    p.add_argument("--reference-name", required=True, help="its study name")
    p.add_argument("--runs", type=int, default=3, help="studies per space")
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--out", default="bench/live", help="folder for the studies and live.json")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spaces = [str(resolve_space_path(s).resolve()) for s in args.spaces]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ref = study_facts(args.reference, args.reference_name, spaces[0])
    widths = list(ref["lr_star"])
    print(f"reference: alpha {ref['alpha']:.2f}, {ref['epochs']} epochs")
    print("|lr* move| per width, log2 units against the reference")
    print(
        f"{'space':<24} {'run':>3} {'wall s':>7} {'epochs':>6} {'train s':>7} {'alpha':>6} "
        f"{'inside':>6}  " + " ".join(f"{w:>5}" for w in widths)
    )
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in spaces}
    for run in range(args.runs):
        for space in spaces:
            name = f"{load_space(space).name}-{run}"
            db = out / "live.db"
            cmd = [sys.executable, "-m", "study.run", "--space", space, "--trials"]
            cmd += [str(args.trials), "--storage", f"sqlite:///{db}", "--study-name", name]
            t = time.perf_counter()
            subprocess.run([*cmd, "--no-report", "--quiet"], check=True, cwd=out)
            facts = study_facts(f"sqlite:///{db}", name, space)
            facts["wall_s"] = time.perf_counter() - t
            facts["moves_log2"] = lr_star_moves(facts, ref)
            facts["inside_reference_interval"] = inside_interval(facts, ref)
            results[space].append(facts)
            cells = [
                f"{m:5.2f}" if m is not None else "    -" for m in facts["moves_log2"].values()
            ]
            alpha = f"{facts['alpha']:6.2f}" if facts["alpha"] is not None else "     -"
            print(
                f"{Path(space).stem:<24} {run:>3} {facts['wall_s']:7.1f} {facts['epochs']:>6} "
                f"{facts['train_seconds']:7.1f} {alpha} {facts['inside_reference_interval']:>4}/"
                f"{len(widths)}  " + " ".join(cells),
                flush=True,
            )
    for space, runs in results.items():
        worst = [
            max((m for m in r["moves_log2"].values() if m is not None), default=0.0) for r in runs
        ]
        print(
            f"{Path(space).stem}: alpha {', '.join(_fmt(r['alpha']) for r in runs)}; "
            f"median epochs {statistics.median(r['epochs'] for r in runs):.0f}; "
            f"median train s {statistics.median(r['train_seconds'] for r in runs):.1f}; "
            f"largest move per run {', '.join(f'{m:.2f}' for m in worst)}"
        )
    (out / "live.json").write_text(json.dumps({"reference": ref, "runs": results}, indent=2))
    print(f"written: {out / 'live.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
