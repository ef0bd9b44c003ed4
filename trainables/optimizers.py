"""The optimizer of a training run, chosen by name from the validated `OptimizerConfig`.

AdamW is XB-Net's choice and the default; Adam adds the weight decay to the gradient (an L2 penalty) instead of
decaying the weights directly; SGD with (optionally Nesterov) momentum is the original U-Net's (Ronneberger et
al. 2015: momentum 0.99 with one large tile per step).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from celltune.trainables.config import OptimizerConfig

logger = logging.getLogger(__name__)

# Which settings each optimizer reads; the others are ignored (with a warning when set explicitly).
OPTIONS_USED: dict[str, frozenset[str]] = {
    "adamw": frozenset({"lr", "weight_decay", "betas", "amsgrad"}),
    "adam": frozenset({"lr", "weight_decay", "betas", "amsgrad"}),
    "sgd": frozenset({"lr", "weight_decay", "momentum", "nesterov"}),
}


def build_optimizer(config: OptimizerConfig,
                    params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]) -> torch.optim.Optimizer:
    """The torch optimizer `config.name` over `params` with the config's settings.

    Args:
        config: validated optimizer settings (`name`: "adamw", "adam" or "sgd").
        params: the model's parameters (of the unwrapped model, so DDP and a single worker build the same state),
            or parameter groups with their own ``lr`` (fine-tuning's encoder group).

    Returns:
        `torch.optim.AdamW`, `torch.optim.Adam` or `torch.optim.SGD`.
    """
    # Values away from their defaults only: a config dumped and validated again (every Ray worker gets one)
    # counts every field as set.
    ignored = sorted(key for key in set(config.model_fields_set) - OPTIONS_USED[config.name] - {"name"}
                     if getattr(config, key) != type(config).model_fields[key].default)
    if ignored:
        logger.warning("optimizer %s ignores %s", config.name, ", ".join(f"optimizer.{key}" for key in ignored))
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=config.weight_decay)
    adam = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
    return adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, amsgrad=config.amsgrad)
