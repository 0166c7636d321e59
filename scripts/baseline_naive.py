"""The naive baseline the benchmark measures the tool against: a straightforward Optuna + PyTorch
script, as one would write it first.

Same space (widths, lr range, epochs, batch size, data split) as the tool, but: a DataLoader,
PyTorch's default thread count, Optuna's default SQLite storage, a study-wide MedianPruner, and a
plain TPE over (width, lr). Usage::

    python scripts/baseline_naive.py --space mlp_digits --trials 200 --storage sqlite:///naive.db
"""

from __future__ import annotations

import argparse
import json
import math
import time

import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from study.data import load_dataset
from study.space import load_space


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--space", default="mlp_digits")
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--storage", default="sqlite:///naive.db")
    args = p.parse_args()
    space = load_space(args.space)
    torch.manual_seed(space.seed)  # one seed at the top, so that a run can be made again
    data = load_dataset(space.dataset, space.seed)
    train_set = TensorDataset(data.x_train, data.y_train)

    def objective(trial: optuna.Trial) -> float:
        width = trial.suggest_categorical("width", list(space.model.widths))
        lr = trial.suggest_float("lr", space.lr.low, space.lr.high, log=True)
        layers: list[nn.Module] = []
        fan_in = data.n_features
        for _ in range(space.model.depth):
            layers += [nn.Linear(fan_in, width), nn.ReLU()]
            fan_in = width
        model = nn.Sequential(*layers, nn.Linear(fan_in, data.n_classes))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        loader = DataLoader(train_set, batch_size=space.training.batch_size, shuffle=True)
        best = math.inf
        for epoch in range(space.training.epochs):
            model.train()
            for xb, yb in loader:
                opt.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                val = nn.functional.cross_entropy(model(data.x_val), data.y_val).item()
            best = min(best, val)
            trial.report(val, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=space.name,
        storage=args.storage,
        sampler=optuna.samplers.TPESampler(seed=space.seed),
        pruner=optuna.pruners.MedianPruner(),
        load_if_exists=True,
    )
    start = time.perf_counter()
    study.optimize(objective, n_trials=args.trials, catch=(Exception,))
    wall = time.perf_counter() - start
    widths = [t.params.get("width") for t in study.trials]
    print(
        json.dumps(
            {
                "wall_s": wall,
                "trials": len(study.trials),
                "per_width": {str(w): widths.count(w) for w in space.model.widths},
            }
        )
    )


if __name__ == "__main__":
    main()
