"""Fine-tuning: start a run from a trained model's weights, optionally with its encoder frozen or slowed down.

The encoder of every registered architecture is its ``entry`` and ``encoder`` children (the stem and the
contracting path); freezing them keeps the features a universal model learned on many datasets while the
decoder adapts to a new one, and a smaller encoder learning rate is the softer version of the same idea.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load
from torch import nn

from celltune.trainables.config import InitConfig

ENCODER_PARTS = ("entry", "encoder")


def first_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str | None:
    """The first tensor by which ``given`` (the parent's weights) does not fit ``expected`` (the new model's), in
    words; None when every name and shape matches."""
    for name, tensor in expected.items():
        if name not in given:
            return f"tensor {name!r} {tuple(tensor.shape)} is missing from the parent's weights"
        if tuple(given[name].shape) != tuple(tensor.shape):
            return (f"tensor {name!r} has shape {tuple(given[name].shape)} in the parent, "
                    f"{tuple(tensor.shape)} in this model")
    extra = next((name for name in given if name not in expected), None)
    return None if extra is None else f"the parent has tensor {extra!r}, which this model lacks"


def load_init_weights(model: nn.Module, init: InitConfig) -> None:
    """Copy the resolved parent weights (``init.weights``, set by the driver) into ``model``."""
    if init.weights is None:
        raise ValueError(f"init.model {init.model!r} was not resolved to weights (the driver sets init.weights)")
    state = load(Path(init.weights).read_bytes())
    mismatch = first_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(f"init.model {init.model!r}: {mismatch}")
    model.load_state_dict(state)


def is_encoder_parameter(name: str) -> bool:
    return name.split(".", 1)[0] in ENCODER_PARTS


def parameter_groups(model: nn.Module, init: InitConfig | None, lr: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one at ``lr``, or under ``init`` the encoder frozen (left out, no
    gradient) or in a group of its own at ``init.encoder_lr``."""
    named = list(model.named_parameters())
    if init is None or (not init.freeze_encoder and init.encoder_lr is None):
        return [{"params": [p for _, p in named], "lr": lr}]
    encoder = [p for name, p in named if is_encoder_parameter(name)]
    rest = [p for name, p in named if not is_encoder_parameter(name)]
    if not encoder:
        raise ValueError(f"model has no {' or '.join(ENCODER_PARTS)} parameters to freeze or slow down")
    if init.freeze_encoder:
        for parameter in encoder:
            parameter.requires_grad_(False)
        return [{"params": rest, "lr": lr}]
    return [{"params": rest, "lr": lr}, {"params": encoder, "lr": init.encoder_lr}]
