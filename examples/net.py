"""A model of your own: any function(width) -> torch.nn.Module. The study varies ``width``."""

from torch import nn


def build(width: int) -> nn.Module:
    """Two hidden layers of ``width`` units for the 8 features and 3 classes of data.csv."""
    return nn.Sequential(
        nn.Linear(8, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 3),
    )
