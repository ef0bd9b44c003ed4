"""Cross entropy with class weights from the batch's own class frequencies: the binary U-Net baseline's loss.

Sparse cell images are mostly background; weighting each class by the inverse of its pixel share in the batch
makes every class present count equally, whatever the foreground fraction of a dataset or crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from celltune.data_prep.common import UserInputError
from celltune.trainables.losses.base import LossOutput, SegmentationLoss, weighted_mean
from celltune.trainables.losses.loss_registry import register_loss


def frequency_class_weights(target: Tensor, classes: int, valid: Tensor | None = None) -> Tensor:
    """Inverse-frequency ("balanced") class weights w_c = N / (K * n_c) of one batch.

    Args:
        target: ``(B, H, W)`` integer class ids.
        classes: K, the number of classes.
        valid: optional ``(B, H, W)`` float mask; only pixels where it is 1 are counted.

    Returns:
        ``(K,)`` float32 weights; 0 for a class absent from the (valid) batch.
    """
    counts = torch.zeros(classes, dtype=torch.float32, device=target.device)
    ones = torch.ones_like(target, dtype=torch.float32) if valid is None else valid.float()
    counts.scatter_add_(0, target.long().flatten(), ones.flatten())
    total = counts.sum()
    return torch.where(counts > 0, total / (classes * counts.clamp_min(1.0)), torch.zeros_like(counts))


@register_loss("freq_ce", target_kind="binary")
class FrequencyWeightedCrossEntropy(SegmentationLoss):
    """sum(w[y] * CE) / sum(w[y]) with w the batch's inverse class frequencies (:func:`frequency_class_weights`).

    With these weights the loss is the mean, over the classes present in the batch, of each class's mean cross
    entropy: one foreground pixel among 99 background pixels counts as much as all the background together. The
    weights are recomputed for every batch (after the margin crop and the valid mask) and carry no gradient.

    Args:
        margin: pixels cropped off each side before the loss.

    Inputs: logits ``(B, C, H, W)`` (C = 2 for background/foreground), target ``(B, H, W)`` integer class ids.
    Terms: ``{"ce": ...}``.
    """

    def __init__(self, *, margin: int = 0) -> None:
        super().__init__(margin=margin)

    def _compute(
        self, logits: Tensor, target: Tensor, weight: Tensor | None, valid: Tensor | None, epoch: float | None
    ) -> LossOutput:
        self._check_class_target(logits, target)
        classes = logits.shape[1]
        if int(target.min()) < 0 or int(target.max()) >= classes:
            raise UserInputError(
                f"loss {self.name!r}: target class ids must lie in [0, {classes - 1}] for {classes} logit channels"
            )
        class_weights = frequency_class_weights(target, classes, valid)
        pixel_weights = class_weights[target.long()]
        if valid is not None:
            pixel_weights = pixel_weights * valid
        ce = weighted_mean(F.cross_entropy(logits, target.long(), reduction="none"), pixel_weights)
        return LossOutput(total=ce, terms={"ce": ce})
