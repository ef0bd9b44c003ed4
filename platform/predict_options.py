"""Settings of a prediction that are not the model: device, tiling, batching, tracking, scale and thresholds.

A module of its own because every prediction layer needs them (the checks, one sequence, many sequences) and the
command modules build them from flags.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from celltune.trainables.model_card import ModelCard

logger = logging.getLogger(__name__)

DEFAULT_MAX_TILE = 1024  # frames with a padded side above this are tiled (predict_probabilities' default)
DEFAULT_BATCH_SIZE = 4


@dataclass(frozen=True)
class PredictOptions:
    """How to run the network and the tracker (model-independent settings).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ... (checked by ``resolve_device``).
        max_tile: tile frames whose padded side exceeds this (None: never tile); a small value forces tiling.
        batch_size: frames (or tiles) per forward pass.
        track: link instances into tracks; False writes each frame's objects as one-frame tracks.
        tracking: keyword arguments of :func:`~celltune.platform.cell_tracker.track_sequence`.
        amp: mixed precision (None: on for CUDA only).
        scale: resample frames by this factor for the network (None: the model's own, see :meth:`ModelCard.scale_for`).
        tta: average the probabilities over the 8 flips and quarter turns (:mod:`celltune.trainables.tta`);
            None: as the model card says (an ensemble chosen with TTA records it).
    """

    device: str = "cpu"
    max_tile: int | None = DEFAULT_MAX_TILE
    batch_size: int = DEFAULT_BATCH_SIZE
    track: bool = True
    tracking: Mapping[str, Any] = field(default_factory=dict)
    amp: bool | None = None
    scale: float | None = None
    tta: bool | None = None


def prediction_thresholds(card: ModelCard, dataset: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The model's thresholds (tuned for ``dataset`` when the search tuned them) with ``overrides`` on top."""
    tuned = card.postprocess_per_dataset
    if dataset is not None and dataset not in tuned:
        logger.warning("no thresholds tuned for dataset %r (tuned: %s); using the model's default ones", dataset,
                       ", ".join(sorted(tuned)) or "none")
    return {**card.postprocess_params(dataset), **overrides}


def with_model_scale(options: PredictOptions, card: ModelCard, dataset: str | None) -> PredictOptions:
    """``options`` with the model's resampling factor for ``dataset`` unless ``--scale`` set one."""
    return options if options.scale is not None else replace(options, scale=card.scale_for(dataset))
