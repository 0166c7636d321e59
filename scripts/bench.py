"""The benchmark: ``python scripts/bench.py`` (from a checkout; not part of the package).

Measures, in one run on this machine, and writes ``bench.json`` and a table:

* the fp32 matmul peak (torch, 1 thread as trials use, and all threads);
* training FLOP/s per width (~ 6 x weights x samples / seconds) and its fraction of that peak,
  of a whole run (with its setup and evaluations) and of its training steps alone;
* ``trial.report`` latency (median, 99th percentile) on the tool's SQLite and on a default one;
* time to answer: seconds from each run's launch until alpha's 95% interval was first at most
  0.3 wide with every width inside its lr range (its trials replayed in the order they ended),
  the alpha there and its distance from the reference's at the end; and the tool run with
  ``--until-ci 0.3``, which stops there;
* the default study run by the tool (its defaults: one worker per core, stacking on), the same
  space with no pruning, no early stopping, no stacking and one trial at a time (the reference
  answer), and the naive baseline (``scripts/baseline_naive.py``: DataLoader, default
  threads, default SQLite, study-wide MedianPruner, plain TPE): wall times, the ratio, epochs
  used, the share of wall time outside training, and how far each width's lr* moves between
  the tool's answer and the reference (log2 units);
* where this CPU multiplies in bf16 (AVX-512 or AMX) and the space in fp32: the bf16 matmul
  peak, training FLOP/s under bf16 matmuls, and the tool's study once more with
  ``training.matmul_precision = "medium"``, judged against the same fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from study.analysis import analyze, points_from_trials
from study.builders import default_workers
from study.data import load_dataset
from study.live import answer_of
from study.model import build_model, count_parameters
from study.space import Space, load_space, resolve_space_path, space_to_toml, with_changes
from study.storage import open_storage, use_wal
from study.train import matmul_arithmetic, matmul_precision, train

__all__ = [
    "inside_interval",
    "lr_star_moves",
    "main",
    "matmul_peak",
    "study_facts",
    "without_speedups",
]

REPO = Path(__file__).resolve().parents[1]
# The width of alpha's 95% interval the time-to-answer rows wait for (--until-ci of the tool).
UNTIL_CI = 0.3


def matmul_peak(
    threads: int, n: int = 1024, seconds: float = 2.0, precision: str = "highest"
) -> float:
    """GFLOP/s of an fp32 n x n matmul with ``threads`` torch threads (best of repeated runs),
    under torch's float32 matmul ``precision`` ("medium": bf16 where the CPU has it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    end = time.perf_counter() + seconds
    with matmul_precision(precision):
        while time.perf_counter() < end:
            t = time.perf_counter()
            for _ in range(5):
                a @ b
            best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    torch.set_num_threads(before)
    return best


def training_flops(
    space_name: str, epochs: int = 3, precision: str | None = None, repeats: int = 3
) -> list[dict[str, float]]:
    """Achieved training GFLOP/s per width, one thread: the fastest of ``repeats`` runs of
    ``epochs`` at lr 1e-3, as the peak is the fastest of its runs (with ``precision``: under
    that matmul precision instead of the space's)."""
    import dataclasses

    torch.set_num_threads(1)
    space = load_space(space_name)
    training = dataclasses.replace(
        space.training, epochs=epochs, matmul_precision=precision or space.training.matmul_precision
    )
    space = dataclasses.replace(space, training=training)
    data = load_dataset(space.dataset, space.seed)
    train(space, data, space.model.widths[0], 1e-3, seed=0)  # warm-up: first-call costs
    rows = []
    for width in space.model.widths:
        model = build_model(space.model, width, data.n_features, data.n_classes)
        weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
        r = min(
            (train(space, data, width, 1e-3, seed=0) for _ in range(repeats)),
            key=operator.attrgetter("seconds"),
        )
        # forward + backward: 6 x weights per training sample; evaluation: 2 x weights per
        # validation sample, every epoch and once before training.
        flops = 6 * weights * len(data.x_train) * epochs + 2 * weights * len(data.x_val) * (
            epochs + 1
        )
        gflops = flops / r.seconds / 1e9
        # The training steps alone: the run less its setup (model, optimizer, the evaluation
        # before training) and its per-epoch evaluations.
        steps = r.seconds - r.setup_seconds - r.eval_seconds - r.callback_seconds
        rows.append(
            {
                "width": width,
                "params": count_parameters(model),
                "seconds_per_epoch": r.seconds / epochs,
                "gflops": gflops,
                "steps_gflops": 6 * weights * len(data.x_train) * epochs / steps / 1e9,
            }
        )
    return rows


def report_latency(folder: Path, n: int = 300) -> dict[str, dict[str, float]]:
    """Milliseconds per ``trial.report`` on the tool's SQLite and on Optuna's default one."""
    out = {}
    for name in ("tool", "default"):
        url = f"sqlite:///{folder / f'latency_{name}.db'}"
        if name == "tool":
            storage = open_storage(url, heartbeat_s=None)
            use_wal(storage)
        else:
            storage = optuna.storages.RDBStorage(url)
        study = optuna.create_study(storage=storage)
        trial = study.ask()
        times = []
        for step in range(n):
            t = time.perf_counter()
            trial.report(1.0 / (step + 1), step)
            times.append((time.perf_counter() - t) * 1000)
        study.tell(trial, 0.0)
        times.sort()
        out[name] = {"median_ms": statistics.median(times), "p99_ms": times[int(0.99 * n) - 1]}
    return out


def bf16_here() -> bool:
    """Whether this CPU multiplies float32 matrices in bf16 under matmul_precision "medium"."""
    return matmul_arithmetic("medium", torch.device("cpu")) == "bf16"


def measures_bf16(space: Space) -> bool:
    """Whether the bench measures bf16 matmuls too: this CPU has them and the space is fp32."""
    return bf16_here() and space.training.matmul_precision == "highest"


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says, else ""."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine() -> str:
    """The bench's machine line: the figures are this CPU's (its model and the vector
    instructions torch's kernels use here), so a table says which machine made it."""
    cpu = cpu_name() or "unknown CPU"
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {cpu} (torch's CPU kernels: "
        f"{torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, "
        f"optuna {optuna.__version__}"
    )


def _timed(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def study_facts(url: str, name: str, space_name: str) -> dict[str, Any]:
    space = load_space(space_name)
    study = optuna.load_study(study_name=name, storage=url)
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    fit = analyze(
        points_from_trials(study.trials),
        list(space.model.widths),
        (space.lr.low, space.lr.high),
        n_bootstrap=200,
    )
    return {
        "trials": len(trials),
        "epochs": sum(
            int(t.user_attrs.get("epochs_run", len(t.intermediate_values))) for t in trials
        ),
        "train_seconds": sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials),
        "eval_seconds": sum(float(t.user_attrs.get("eval_seconds", 0.0)) for t in trials),
        "report_seconds": sum(float(t.user_attrs.get("report_seconds", 0.0)) for t in trials),
        "lr_star": {str(e.width): e.lr_star for e in fit.widths},
        "lr_interval": {str(e.width): [e.lr_low, e.lr_high] for e in fit.widths},
        "alpha": fit.alpha,
    }


def time_to_answer(
    url: str,
    name: str,
    space_name: str,
    launched: datetime,
    until_ci: float = UNTIL_CI,
    estimator: str = "joint",
) -> dict[str, Any]:
    """When a run's answer first settled: its finished trials replayed in the order they ended,
    the report's analysis (study.live.Answer.settles) after every 5th. Seconds from the run's
    launch to the trial that settled it; None for "never" within the run's trials.
    ``estimator``: the report's (joint) or the per-width one it replaced (study.analysis)."""
    space = load_space(space_name)
    study = optuna.load_study(study_name=name, storage=url)
    done = sorted(
        (t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)),
        key=operator.attrgetter("datetime_complete"),
    )
    widths, lr_range = list(space.model.widths), (space.lr.low, space.lr.high)
    for n in [*range(5, len(done), 5), len(done)]:
        fit = analyze(points_from_trials(done[:n]), widths, lr_range, estimator=estimator)
        answer = answer_of(fit, n)
        if answer.settles(until_ci):
            seconds = (done[n - 1].datetime_complete - launched).total_seconds()
            return {"seconds": seconds, "trials": n, "alpha": fit.alpha, "ci": answer.ci_width}
    return {"seconds": None, "trials": None, "alpha": None, "ci": None}


def without_speedups(space: Space) -> Space:
    """The reference's space, ``NAME_nopruning``: its pruner set to "none" (the default prunes)
    and early stopping off, so that every trial trains every epoch."""
    changes = {"name": f"{space.name}_nopruning", "pruner.name": "none", "training.patience": 0}
    return with_changes(space, changes)


def lr_star_moves(facts: dict[str, Any], ref: dict[str, Any]) -> dict[str, float | None]:
    """|log2(lr* / reference lr*)| per width of two :func:`study_facts` (None where either has
    no estimate)."""
    return {
        w: abs(math.log2(v / ref["lr_star"][w])) if v and ref["lr_star"].get(w) else None
        for w, v in facts["lr_star"].items()
    }


def inside_interval(facts: dict[str, Any], ref: dict[str, Any]) -> int:
    """How many widths' lr* fall inside the reference's own bootstrap interval: a move the
    reference cannot tell from its own noise."""
    n = 0
    for w, v in facts["lr_star"].items():
        lo, hi = ref["lr_interval"].get(w, [None, None])
        n += bool(v and lo and hi and lo <= v <= hi)
    return n


def compare_studies(
    folder: Path, space_name: str, trials: int, workers: int | None
) -> dict[str, Any]:
    """The tool (fast settings), the reference (no pruning, one process), the naive baseline."""
    space_path = resolve_space_path(space_name).resolve()  # the runs start in ``folder``
    space = load_space(str(space_path))  # its name is the file's stem unless the file sets one
    no_prune = folder / f"{space.name}_nopruning.toml"
    no_prune.write_text(space_to_toml(without_speedups(space)))
    reference = load_space(str(no_prune))
    if reference.pruner.name != "none" or reference.training.patience:
        raise SystemExit(f"error: could not turn the pruner and early stopping of {space_path} off")
    py = sys.executable

    def tool(space_file: Path, db: str) -> list[str]:
        return [
            py,
            "-m",
            "study.run",
            "--space",
            str(space_file),
            "--trials",
            str(trials),
            "--storage",
            f"sqlite:///{db}",
            *(["--workers", str(workers)] if workers else []),  # else the tool's default
            "--no-report",
            "--quiet",
        ]

    runs = {
        "tool": tool(space_path, "tool.db"),
        "tool_until": [*tool(space_path, "tool_until.db"), "--until-ci", str(UNTIL_CI)],
    }
    space_files = {
        "tool": space_path,
        "tool_until": space_path,
        "reference": no_prune,
        "naive": space_path,
    }
    # The tool again with bf16 matmuls (training.matmul_precision = "medium"), where this CPU
    # has them and the space multiplies in fp32: judged against the same fp32 reference.
    if measures_bf16(space):
        bf16_space = folder / f"{space.name}_bf16.toml"
        medium = with_changes(
            space, {"name": f"{space.name}_bf16", "training.matmul_precision": "medium"}
        )
        bf16_space.write_text(space_to_toml(medium))
        runs["tool_bf16"] = tool(bf16_space, "tool_bf16.db")
        space_files["tool_bf16"] = bf16_space
    runs |= {
        "reference": [
            py,
            "-m",
            "study.run",
            "--space",
            str(no_prune),
            "--trials",
            str(trials),
            "--storage",
            "sqlite:///reference.db",
            "--workers",
            "1",
            "--stack",
            "1",
            "--no-report",
            "--quiet",
        ],
        "naive": [
            py,
            str(REPO / "scripts" / "baseline_naive.py"),
            "--space",
            str(space_path),
            "--trials",
            str(trials),
            "--storage",
            "sqlite:///naive.db",
        ],
    }
    # The tool's processes: its --workers, or the default it picks for a fresh study on CPU.
    tool_procs = workers or default_workers(torch.device("cpu"), 1, trials)
    out: dict[str, Any] = {"tool_processes": tool_procs}
    for name, cmd in runs.items():
        for suffix in ("", "-wal", "-shm"):
            (folder / f"{name}.db{suffix}").unlink(missing_ok=True)
        launched = datetime.now()  # as Optuna stamps trials: local time, no zone
        wall = _timed(cmd, folder)
        study_name = load_space(str(space_files[name])).name  # each run's study: its space's
        url = f"sqlite:///{folder / f'{name}.db'}"
        facts = study_facts(url, study_name, str(space_path))
        facts["time_to_answer"] = time_to_answer(url, study_name, str(space_path), launched)
        if name == "tool":  # the same trials, judged by the per-width estimator (item 2)
            out["tool_per_width"] = {
                "time_to_answer": time_to_answer(
                    url, study_name, str(space_path), launched, estimator="per_width"
                )
            }
        n_proc = tool_procs if name.startswith("tool") else 1
        facts["wall_s"] = wall
        # Shares of the CPU time (wall x processes): training steps; the per-epoch evaluation;
        # reporting and pruning inside a trial (storage); and everything between trials
        # (sampler, storage, process start). Outside training = all but the steps. The naive
        # script records no times: its shares are not measured.
        if name == "naive":
            facts["outside_training_share"] = None
        else:
            cpu = wall * n_proc
            steps = facts["train_seconds"] - facts["eval_seconds"] - facts["report_seconds"]
            facts["shares"] = {
                "steps": steps / cpu,
                "evaluation": facts["eval_seconds"] / cpu,
                "in_trial_storage": facts["report_seconds"] / cpu,
                "between_trials": max(0.0, 1 - facts["train_seconds"] / cpu),
            }
            facts["outside_training_share"] = max(0.0, 1 - steps / cpu)
        out[name] = facts
    ref_interval = out["reference"]["lr_interval"]
    for name in ("tool", "tool_per_width", "tool_until", "tool_bf16", "naive", "reference"):
        answer = out[name]["time_to_answer"] if name in out else {}
        if answer.get("alpha") is not None and out["reference"]["alpha"] is not None:
            answer["alpha_from_reference"] = answer["alpha"] - out["reference"]["alpha"]
    for name in ("tool", "tool_until", "tool_bf16", "naive"):
        if name not in out:
            continue
        out[name]["lr_star_moves_log2"] = lr_star_moves(out[name], out["reference"])
        out[name]["lr_star_inside_reference_interval"] = inside_interval(
            out[name], out["reference"]
        )
    out["reference"]["lr_interval_width_log2"] = {
        w: math.log2(hi / lo) if lo and hi else None for w, (lo, hi) in ref_interval.items()
    }
    out["speedup_vs_naive"] = out["naive"]["wall_s"] / out["tool"]["wall_s"]
    out["speedup_vs_reference"] = out["reference"]["wall_s"] / out["tool"]["wall_s"]
    if "tool_bf16" in out:
        out["bf16_speedup_vs_naive"] = out["naive"]["wall_s"] / out["tool_bf16"]["wall_s"]
        out["bf16_speedup_vs_tool"] = out["tool"]["wall_s"] / out["tool_bf16"]["wall_s"]
    return out


def _table(res: dict[str, Any]) -> str:
    lines = [
        f"machine: {res['machine']}",
        f"fp32 matmul peak: {res['peak_gflops_1thread']:.0f} GFLOP/s (1 thread), "
        f"{res['peak_gflops_all']:.0f} GFLOP/s ({res['threads_all']} threads)",
        "",
    ]
    bf16 = res.get("training_bf16")
    if bf16:
        lines[-1:-1] = [
            f"bf16 matmul peak (matmul_precision medium): {res['peak_gflops_1thread_bf16']:.0f} "
            "GFLOP/s (1 thread)"
        ]
        lines.append(
            "width  params     s/epoch  GFLOP/s  of peak  steps: GFLOP/s  of peak   |  "
            "bf16: s/epoch  GFLOP/s  of fp32 peak  of bf16 peak"
        )
    else:
        lines.append("width  params     s/epoch  GFLOP/s  of peak  steps: GFLOP/s  of peak")
    peak = res["peak_gflops_1thread"]
    for i, r in enumerate(res["training"]):
        line = (
            f"{r['width']:>5}  {r['params']:>9,}  {r['seconds_per_epoch']:7.3f}  "
            f"{r['gflops']:7.1f}  {r['gflops'] / peak:6.0%}  "
            f"{r['steps_gflops']:14.1f}  {r['steps_gflops'] / peak:7.0%}"
        )
        if bf16:
            b = bf16[i]
            line += (
                f"   |        {b['seconds_per_epoch']:7.3f}  {b['gflops']:7.1f}  "
                f"{b['gflops'] / res['peak_gflops_1thread']:12.0%}  "
                f"{b['gflops'] / res['peak_gflops_1thread_bf16']:12.0%}"
            )
        lines.append(line)
    lat = res["report_latency"]
    lines += [
        "",
        f"trial.report: tool SQLite median {lat['tool']['median_ms']:.2f} ms, "
        f"p99 {lat['tool']['p99_ms']:.2f} ms; default SQLite median "
        f"{lat['default']['median_ms']:.2f} ms, p99 {lat['default']['p99_ms']:.2f} ms",
    ]
    st = res["studies"]
    n_widths = len(st["reference"]["lr_star"])
    lines += [
        "",
        "run        wall s  trials  epochs  outside training  alpha   max |lr* move| log2  "
        "inside ref. interval",
    ]
    for name in ("tool", "tool_until", "tool_bf16", "reference", "naive"):
        if name not in st:
            continue
        s = st[name]
        moves = [m for m in s.get("lr_star_moves_log2", {}).values() if m is not None]
        alpha = f"{s['alpha']:.2f}" if s["alpha"] is not None else "-"
        share = s["outside_training_share"]
        share_s = f"{share:.1%}" if share is not None else "n/a"
        inside = s.get("lr_star_inside_reference_interval")
        inside_s = f"{inside}/{n_widths}" if inside is not None else "-"
        lines.append(
            f"{name:<9}  {s['wall_s']:6.1f}  {s['trials']:6d}  {s['epochs']:6d}  "
            f"{share_s:>15}  {alpha:>5}   {max(moves) if moves else 0:18.2f}  {inside_s:>20}"
        )
    if "tool_processes" in st:
        lines.append(f"(tool: {st['tool_processes']} processes, one torch thread each)")
    lines += [
        "",
        f"time to answer (alpha's interval <= {UNTIL_CI} wide, every width inside its range):",
        "run        seconds from launch  trials  alpha  interval  alpha - reference's at "
        f"{st['reference']['trials']}",
    ]
    for name in ("tool", "tool_per_width", "tool_until", "tool_bf16", "reference", "naive"):
        answer = st.get(name, {}).get("time_to_answer")
        if not answer:
            continue
        if answer["seconds"] is None:
            lines.append(f"{name:<14}  {'never':>19}")
            continue
        gap = answer.get("alpha_from_reference")
        lines.append(
            f"{name:<14}  {answer['seconds']:19.1f}  {answer['trials']:6d}  "
            f"{answer['alpha']:5.2f}  {answer['ci']:8.2f}  "
            + (f"{gap:+.2f}" if gap is not None else "-")
        )
    lines += [
        "",
        "CPU time (wall x processes)  steps  evaluation  in-trial storage  between trials",
    ]
    for name in ("tool", "tool_bf16", "reference"):
        sh = st.get(name, {}).get("shares")
        if sh:
            lines.append(
                f"{name:<27}  {sh['steps']:5.1%}  {sh['evaluation']:10.1%}  "
                f"{sh['in_trial_storage']:16.1%}  {sh['between_trials']:14.1%}"
            )
    widths_log2 = [v for v in st["reference"].get("lr_interval_width_log2", {}).values() if v]
    if widths_log2:
        lines.append(
            f"reference lr* interval widths: {min(widths_log2):.2f}..{max(widths_log2):.2f} log2"
        )
    lines += [
        "",
        f"tool vs naive baseline: {st['speedup_vs_naive']:.2f}x faster; vs the "
        f"reference (no pruning, one process): {st['speedup_vs_reference']:.2f}x",
    ]
    if "bf16_speedup_vs_naive" in st:
        lines.append(
            f"tool_bf16 (bf16 matmuls) vs naive: {st['bf16_speedup_vs_naive']:.2f}x; vs the "
            f"tool in fp32: {st['bf16_speedup_vs_tool']:.2f}x"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--table", metavar="BENCH_JSON", help="only print the table of a bench.json")
    p.add_argument("--space", default="mlp_digits")
    p.add_argument("--trials", type=int, default=200)
    p.add_argument(
        "--workers", type=int, default=None, help="the tool's --workers (default: its default)"
    )
    p.add_argument("--out", default="bench", help="folder for bench.json and the studies")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.table:
        print(_table(json.loads(Path(args.table).read_text())))
        return 0
    folder = Path(args.out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    res: dict[str, Any] = {
        "machine": machine(),
        "threads_all": os.cpu_count(),
        "command": "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    res["peak_gflops_1thread"] = matmul_peak(1)
    res["peak_gflops_all"] = matmul_peak(os.cpu_count() or 1)
    res["training"] = training_flops(args.space)
    if measures_bf16(load_space(args.space)):
        res["peak_gflops_1thread_bf16"] = matmul_peak(1, precision="medium")
        res["training_bf16"] = training_flops(args.space, precision="medium")
    res["report_latency"] = report_latency(folder)
    res["studies"] = compare_studies(folder, args.space, args.trials, args.workers)
    (folder / "bench.json").write_text(json.dumps(res, indent=2) + "\n")
    print(_table(res))
    print(f"\nwritten: {folder / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
