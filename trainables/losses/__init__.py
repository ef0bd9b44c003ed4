"""Losses of celltune.trainables, chosen by name with :func:`build_loss`.

Every loss is a :class:`SegmentationLoss` called as ``loss(logits, target, weight=None, valid=None,
epoch=None)`` and returns a :class:`LossOutput` (``total`` to back-propagate, ``terms`` to log).
"""

# Importing each loss module here (explicitly, no filesystem scan) is what registers it.
from celltune.trainables.losses.base import TARGET_KINDS, LossOutput, SegmentationLoss, center_crop
from celltune.trainables.losses.edge_bce import EdgeWeightedBCE, edge_power
from celltune.trainables.losses.edge_weights import edge_distance_weights
from celltune.trainables.losses.frequency_ce import FrequencyWeightedCrossEntropy, frequency_class_weights
from celltune.trainables.losses.j_regularization import CrossEntropyJ, j_regularization_per_image
from celltune.trainables.losses.loss_registry import (
    LossSpec,
    build_loss,
    list_losses,
    loss_spec,
    loss_target_kind,
    register_loss,
)
from celltune.trainables.losses.weight_map_ce import WeightMapCrossEntropy
from celltune.trainables.losses.weighted_ce import WeightedCrossEntropy

__all__ = [
    "TARGET_KINDS",
    "CrossEntropyJ",
    "EdgeWeightedBCE",
    "FrequencyWeightedCrossEntropy",
    "LossOutput",
    "LossSpec",
    "SegmentationLoss",
    "WeightMapCrossEntropy",
    "WeightedCrossEntropy",
    "build_loss",
    "center_crop",
    "edge_distance_weights",
    "edge_power",
    "frequency_class_weights",
    "j_regularization_per_image",
    "list_losses",
    "loss_spec",
    "loss_target_kind",
    "register_loss",
]
