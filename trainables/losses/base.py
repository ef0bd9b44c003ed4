"""What every celltune loss shares: the output record, the crop helper and the input checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.target_kinds import TARGET_KINDS as TARGET_KIND_TABLE

TARGET_KINDS = tuple(TARGET_KIND_TABLE)
"""Target encodings a loss can consume: tertiary = (B, H, W) class ids background/boundary/cell;
mask_marker = (B, 2, H, W) 0/1 cell mask and marker; binary = (B, H, W) class ids 0/1."""


@dataclass(frozen=True)
class LossOutput:
    """A loss value to back-propagate plus its named parts for logging.

    Attributes:
        total: scalar tensor to call ``backward()`` on.
        terms: named scalar tensors (unweighted parts, e.g. ``{"ce": ..., "j": ...}``).
    """

    total: Tensor
    terms: dict[str, Tensor]

    def floats(self) -> dict[str, float]:
        """``{"total": ..., **terms}`` as Python floats (one device sync per value), for loggers."""
        out = {"total": float(self.total.detach())}
        out.update({name: float(value.detach()) for name, value in self.terms.items()})
        return out


def center_crop(tensor: Tensor, margin: int) -> Tensor:
    """Drop ``margin`` pixels on each side of the last two (spatial) dimensions.

    Training crops are reflection-padded (8 px in XB-Net) so the network sees context; the loss is computed on
    the central crop only. Works for logits ``(B, C, H, W)``, targets ``(B, H, W)`` and masks alike.

    Raises:
        UserInputError: negative margin, fewer than two dimensions, or nothing left after cropping.
    """
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise UserInputError(f"margin={margin!r}: must be a non-negative integer")
    if tensor.ndim < 2:
        raise UserInputError(f"center_crop: tensor of shape {tuple(tensor.shape)} has no two spatial dimensions")
    if margin == 0:
        return tensor
    height, width = tensor.shape[-2:]
    if 2 * margin >= height or 2 * margin >= width:
        raise UserInputError(f"margin={margin}: leaves nothing of a {height}x{width} tensor")
    return tensor[..., margin : height - margin, margin : width - margin]


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """sum(w * v) / sum(w); 0 (with a gradient path) when all weights are 0, e.g. a fully invalid crop."""
    return (values * weights).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)


class SegmentationLoss(nn.Module):
    """Base class: crops, checks the common inputs and dispatches to ``_compute``.

    Subclasses set ``target_kind``, ``needs_weight`` and ``needs_epoch`` so a training loop (and
    :func:`~celltune.trainables.losses.loss_spec`) knows what to feed them.
    """

    name: ClassVar[str] = ""
    target_kind: ClassVar[str] = ""
    needs_weight: ClassVar[bool] = False
    needs_epoch: ClassVar[bool] = False

    def __init__(self, *, margin: int = 0) -> None:
        super().__init__()
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
            raise UserInputError(f"loss {self.name!r}: margin={margin!r} must be a non-negative integer")
        self.margin = margin

    def forward(
        self,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None = None,
        *,
        valid: Tensor | None = None,
        epoch: float | None = None,
    ) -> LossOutput:
        """Compute the loss.

        Args:
            logits: raw network output ``(B, C, H, W)``; computed in float32 whatever the autocast dtype.
            target: in the loss's ``target_kind`` encoding.
            weight: per-pixel weight map, only for losses with ``needs_weight``.
            valid: optional ``(B, H, W)`` or ``(B, 1, H, W)`` mask; pixels where it is False/0 are ignored.
            epoch: training epoch (may be fractional), only used by losses with ``needs_epoch``.

        Raises:
            UserInputError: missing or unexpected weight/epoch, or shapes that do not fit together.
        """
        if logits.ndim != 4:
            raise UserInputError(f"loss {self.name!r}: logits must be (B, C, H, W), got {tuple(logits.shape)}")
        if self.needs_weight and weight is None:
            raise UserInputError(f"loss {self.name!r} needs a per-pixel weight map")
        if not self.needs_weight and weight is not None:
            raise UserInputError(f"loss {self.name!r} takes no weight map (got one of shape {tuple(weight.shape)})")
        if self.needs_epoch and epoch is None:
            raise UserInputError(f"loss {self.name!r} needs the current epoch")
        mask = self._valid_mask(valid, logits)
        if self.margin:
            logits, target = center_crop(logits, self.margin), center_crop(target, self.margin)
            weight = None if weight is None else center_crop(weight, self.margin)
            mask = None if mask is None else center_crop(mask, self.margin)
        return self._compute(logits.float(), target, weight, mask, epoch)

    def _compute(
        self, logits: Tensor, target: Tensor, weight: Tensor | None, valid: Tensor | None, epoch: float | None
    ) -> LossOutput:
        raise NotImplementedError

    def _valid_mask(self, valid: Tensor | None, logits: Tensor) -> Tensor | None:
        """The valid mask as float (B, H, W), checked against the logits."""
        if valid is None:
            return None
        if valid.ndim == 4 and valid.shape[1] == 1:
            valid = valid[:, 0]
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(valid.shape) != expected:
            raise UserInputError(
                f"loss {self.name!r}: valid mask shape {tuple(valid.shape)} does not match (B, H, W) = {expected}"
            )
        return valid.to(dtype=torch.float32)

    def _check_class_target(self, logits: Tensor, target: Tensor) -> None:
        """Class-id targets: integer (B, H, W) matching the logits."""
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(target.shape) != expected:
            raise UserInputError(
                f"loss {self.name!r}: target shape {tuple(target.shape)} does not match (B, H, W) = {expected}"
            )
        if target.is_floating_point() or target.dtype == torch.bool:
            raise UserInputError(f"loss {self.name!r}: target must hold integer class ids, got {target.dtype}")

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


def check_class_weights(name: str, class_weights: object, num_classes: int | None = None) -> tuple[float, ...]:
    """Validate a class-weight sequence: at least 2 finite non-negative numbers, not all zero."""
    try:
        values = tuple(float(v) for v in class_weights)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise UserInputError(f"loss {name!r}: class_weights={class_weights!r} must be a sequence of numbers") from None
    if len(values) < 2 or (num_classes is not None and len(values) != num_classes):
        wanted = "at least 2" if num_classes is None else str(num_classes)
        raise UserInputError(f"loss {name!r}: class_weights={class_weights!r} needs {wanted} values")
    if any(not (v >= 0.0 and v < float("inf")) for v in values) or not any(values):
        raise UserInputError(f"loss {name!r}: class_weights={class_weights!r} must be finite, >= 0, not all 0")
    return values
