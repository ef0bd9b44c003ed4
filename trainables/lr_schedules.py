"""Learning-rate schedules: the paper's, stepped once per epoch (it counts restarts in epochs), and ``one_cycle``,
set from the run's progress after every optimizer step.

Progress is the share of the run done, in steps or in wall time when the run has a time budget (whichever is
further), so a run cut short by its budget still warms up and anneals completely.
"""

from __future__ import annotations

import math
from typing import Any, get_args

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    CosineAnnealingWarmRestarts,
    LRScheduler,
    StepLR,
)

from celltune.trainables.config import SchedulerConfig

SCHEDULES: tuple[str, ...] = get_args(SchedulerConfig.model_fields["name"].annotation)  # the config names them
ONE_CYCLE_START = 1 / 25  # one-cycle warm-up starts at lr / 25 (Smith and Topin, 2019; torch's OneCycleLR)


class OneCycleSchedule:
    """Warm-up from ``lr / 25`` to ``lr`` over ``warmup`` of the run (half-cosine), then cosine down to ``eta_min``.

    Set by :meth:`set_progress` after each optimizer step; :meth:`step` (the per-epoch hook) does nothing.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, warmup: float, eta_min: float) -> None:
        if not 0.0 <= warmup < 1.0:
            raise ValueError(f"warmup_fraction={warmup}: must lie in [0, 1)")
        self.optimizer = optimizer
        self.warmup = warmup
        self.eta_min = eta_min
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.progress = 0.0
        self.set_progress(0.0)

    def factor(self, progress: float, base_lr: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if p < self.warmup:
            return ONE_CYCLE_START + (1 - ONE_CYCLE_START) * (1 - math.cos(math.pi * p / self.warmup)) / 2
        floor = min(self.eta_min / base_lr, 1.0) if base_lr > 0 else 0.0
        done = (p - self.warmup) / (1 - self.warmup)
        return floor + (1 - floor) * (1 + math.cos(math.pi * done)) / 2

    def set_progress(self, progress: float) -> None:
        self.progress = float(progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * self.factor(self.progress, base)

    def step(self) -> None:
        """Per-epoch hook of the epoch schedules; this one follows progress instead."""

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "progress": self.progress}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = list(state["base_lrs"])
        self.set_progress(state["progress"])


def build_lr_schedule(optimizer: torch.optim.Optimizer, name: str, *, epochs: int, eta_min: float = 1e-6,
                      t0: int = 100, t_mult: int = 2, step_size: int = 30, gamma: float = 0.5,
                      warmup_fraction: float = 0.1) -> LRScheduler | OneCycleSchedule:
    """Build a per-epoch schedule.

    ``warm_restarts`` with ``t0=100, t_mult=2`` restarts at epochs 100, 300 and 700 and decays the rate from
    the optimizer's lr to ``eta_min`` in each cycle (Guo et al.: 1e-4 -> 1e-6); ``step`` multiplies the
    rate by ``gamma`` every ``step_size`` epochs (U-SE-ResNet: halve every 30); ``one_cycle`` warms up over
    ``warmup_fraction`` of the run and anneals to ``eta_min`` by its end (see :class:`OneCycleSchedule`).
    """
    if name == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=max(epochs, 1), eta_min=eta_min)
    if name == "warm_restarts":
        return CosineAnnealingWarmRestarts(optimizer, T_0=t0, T_mult=t_mult, eta_min=eta_min)
    if name == "step":
        return StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "one_cycle":
        return OneCycleSchedule(optimizer, warmup=warmup_fraction, eta_min=eta_min)
    raise ValueError(f"unknown lr schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
