"""Learning-rate schedules, stepped once per epoch (the paper counts restarts in epochs)."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LRScheduler,
    StepLR,
)

SCHEDULES = ("constant", "cosine", "warm_restarts", "step")


def build_lr_schedule(optimizer: torch.optim.Optimizer, name: str, *, epochs: int, eta_min: float = 1e-6,
                      t0: int = 100, t_mult: int = 2, step_size: int = 30, gamma: float = 0.5) -> LRScheduler:
    """Build a per-epoch schedule.

    ``warm_restarts`` with ``t0=100, t_mult=2`` restarts at epochs 100, 300 and 700 and decays the rate from
    the optimizer's lr to ``eta_min`` in each cycle (Guo et al.: 1e-4 -> 1e-6); ``step`` multiplies the
    rate by ``gamma`` every ``step_size`` epochs (U-SE-ResNet: halve every 30).
    """
    if name == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=eta_min)
    if name == "warm_restarts":
        return CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=t_mult, eta_min=eta_min)
    if name == "step":
        return StepLR(optimizer, step_size=step_size, gamma=gamma)
    raise ValueError(f"unknown lr schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
