"""An ensemble of trained networks as one architecture: the weighted mean of its members' probabilities.

A search trains many good models; averaging the best few removes part of each one's errors (nnU-Net averages its
five folds). Registered as the architecture ``ensemble``, whose options name the members' registry configs, an
ensemble is built, saved (one safetensors file with ``members.<i>.`` prefixes), registered, tiled, exported and
predicted like any single network. Its output is the log of the mean probability (softmax kinds) or the logit of
the mean probability (sigmoid kinds), so the usual output activation gives exactly the members' mean
probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.architectures import TargetKindName, build_model, model_spec, register_model
from celltune.trainables.target_kinds import target_kind as lookup_target_kind

_PROBABILITY_FLOOR = 1e-7  # keeps log/logit finite where every member is certain


class Ensemble(nn.Module):
    def __init__(self, members: list[nn.Module], weights: list[float], target_kind: str, size_multiple: int):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / float(sum(weights)),
                             persistent=False)
        self.activation = lookup_target_kind(target_kind).activation
        self.size_multiple = size_multiple

    def forward(self, x: Tensor) -> Tensor:
        mean: Tensor | None = None
        for weight, member in zip(self.weights, self.members, strict=True):
            logits = member(x).float()
            probs = logits.softmax(dim=1) if self.activation == "softmax" else logits.sigmoid()
            mean = weight * probs if mean is None else mean + weight * probs
        assert mean is not None
        if self.activation == "softmax":
            return mean.clamp_min(_PROBABILITY_FLOOR).log()
        return torch.logit(mean, eps=_PROBABILITY_FLOOR)


def _member_specs(members: list[dict[str, Any]]) -> list:
    specs = []
    for index, member in enumerate(members):
        if not isinstance(member, dict) or not isinstance(member.get("name"), str):
            raise UserInputError(f"ensemble member {index}: expected {{name: ..., options: {{...}}}}, got {member!r}")
        if member["name"] == "ensemble":
            raise UserInputError(f"ensemble member {index}: an ensemble cannot hold another ensemble")
        spec = model_spec(member["name"], **dict(member.get("options") or {}))
        if spec.time_window != 1 or spec.output_crop:
            raise UserInputError(f"ensemble member {index} ({member['name']}): only single-frame, same-padded "
                                 "models can be averaged")
        specs.append(spec)
    return specs


def _size_multiple(options: dict[str, Any]) -> int:
    return math.lcm(1, *(spec.size_multiple for spec in _member_specs(options["members"])))


@register_model(size_multiple=_size_multiple, trainable=False)
def ensemble(*, members: list = [], weights: list | None = None,  # noqa: B006 (options are plain data)
             target_kind: TargetKindName = "tertiary") -> Ensemble:
    """The weighted mean of ``members`` (registry configs ``{name, options}``) trained on ``target_kind``;
    ``weights`` default to equal. Members are built untrained: load the ensemble's state dict afterwards."""
    if not members:
        raise UserInputError("ensemble: give at least one member")
    weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
    if len(weights) != len(members) or any(not w > 0 for w in weights):
        raise UserInputError(f"ensemble: weights {weights} must be one positive number per member "
                             f"({len(members)} members)")
    specs = _member_specs(members)
    for index, spec in enumerate(specs):
        if spec.target_kind != target_kind:
            raise UserInputError(f"ensemble member {index} ({spec.name}) predicts {spec.target_kind}, the ensemble "
                                 f"{target_kind}")
    built = [build_model(member["name"], **dict(member.get("options") or {})) for member in members]
    return Ensemble(built, weights, target_kind, _size_multiple({"members": members}))
