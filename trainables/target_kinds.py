"""The target kinds: what a network is trained to output and how its output becomes cells, in one table.

Everything that depends on the kind reads it from :data:`TARGET_KINDS`: the models' output channels, the output
activation, the stored targets the training crops read, the post-processing function and its default thresholds
(taken from the function's signature, so they are written once), and the help text the CLI shows.

How to add one: write its ``*_to_instances`` function in :mod:`celltune.trainables.postprocess` (keyword
thresholds with defaults), make :mod:`celltune.data_prep.targets` store its targets, and add a row here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from celltune.data_prep.common import UserInputError, did_you_mean
from celltune.trainables.postprocess import binary_to_instances, mask_marker_to_instances, tertiary_to_instances

Activation = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class TargetKind:
    """One kind of training target.

    Attributes:
        name: the kind's name in configs and model cards.
        channels: output channels of a model trained on it.
        activation: softmax over exclusive classes (the target is one class map) or a sigmoid per channel (the
            targets are stacked channels).
        stored_targets: the store arrays under ``<source>/`` a training crop reads: one class map for softmax
            kinds, one array per channel for sigmoid kinds.
        weight_source: where a weighted loss's pixel weights come from: the stored ``weight`` map, or
            ``labels`` (computed from the warped instance labels), or None when the kind has none.
        to_instances: probabilities ``(C, ...)`` -> int32 instance labels.
        help: one line for the CLI.
    """

    name: str
    channels: int
    activation: Activation
    stored_targets: tuple[str, ...]
    weight_source: Literal["weight", "labels"] | None
    to_instances: Callable[..., np.ndarray]
    help: str

    @property
    def postprocess_defaults(self) -> dict[str, Any]:
        """The thresholds ``to_instances`` takes, with their defaults (its signature is the one source)."""
        parameters = list(inspect.signature(self.to_instances).parameters.values())[1:]
        return {p.name: p.default for p in parameters}


TARGET_KINDS: dict[str, TargetKind] = {kind.name: kind for kind in (
    TargetKind("tertiary", 3, "softmax", ("tertiary",), None, tertiary_to_instances,
               "background / cell / boundary classes; cells are the components of the cell class"),
    TargetKind("mask_marker", 2, "sigmoid", ("mask", "marker"), "labels", mask_marker_to_instances,
               "cell mask + eroded markers; markers seed a watershed of the mask"),
    TargetKind("binary", 2, "softmax", ("fg",), "weight", binary_to_instances,
               "foreground / background; touching cells split by an optional distance watershed"),
)}

DEFAULT_POSTPROCESS_PARAMS: dict[str, dict[str, Any]] = {
    name: kind.postprocess_defaults for name, kind in TARGET_KINDS.items()
}


def target_kind(name: str) -> TargetKind:
    """The kind called ``name``.

    Raises:
        UserInputError: an unknown kind (with "did you mean" and the known ones).
    """
    if name not in TARGET_KINDS:
        hint = did_you_mean(name, TARGET_KINDS)
        raise UserInputError(f"unknown target kind {name!r}{f' ({hint})' if hint else ''}; allowed: "
                             f"{', '.join(sorted(TARGET_KINDS))}")
    return TARGET_KINDS[name]


def postprocess(kind: str, probs: np.ndarray, **params: Any) -> np.ndarray:
    """Instances for target kind ``kind``; unset params use the defaults.

    Raises:
        UserInputError: unknown target kind or parameter (the message lists the allowed ones) or a bad value.
    """
    entry = target_kind(kind)
    defaults = entry.postprocess_defaults
    for name in params:
        if name not in defaults:
            hint = did_you_mean(name, defaults)
            raise UserInputError(f"{kind} post-processing: unknown parameter {name!r}{f' ({hint})' if hint else ''}; "
                                 f"allowed: {', '.join(sorted(defaults))}")
    return entry.to_instances(probs, **{**defaults, **params})


def thresholds_help() -> str:
    """Every kind's thresholds with their defaults, for ``--set`` help texts."""
    return "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in kind.postprocess_defaults.items())
                     for name, kind in TARGET_KINDS.items())
