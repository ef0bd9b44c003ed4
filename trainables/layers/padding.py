"""Pad images to the size multiple a model needs, and crop its outputs back.

Models here require H and W to be multiples of their `size_multiple` (2 ** number of downsamplings) rather than
padding internally, so training crops pay nothing and inference decides how to pad. The tests and the inference
helper share this function.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from celltune.data_prep.common import UserInputError

PadMode = Literal["reflect", "replicate", "constant", "circular"]
PAD_MODES: tuple[str, ...] = ("reflect", "replicate", "constant", "circular")


def pad_to_multiple(x: Tensor, multiple: int, mode: PadMode = "reflect") -> tuple[Tensor, tuple[object, ...]]:
    """Pad the last two dimensions of `x` up to multiples of `multiple`, split evenly before and after.

    Args:
        x: (..., H, W) tensor, e.g. (B, C, H, W).
        multiple: size multiple, e.g. `model.size_multiple`.
        mode: torch padding mode; "reflect" (default) mirrors without repeating the edge pixel, "constant"
            pads zeros.

    Returns:
        `(padded, crop)` with `padded[crop]` equal to `x`; index a model output of the padded input with `crop`
        to get back to (..., H, W).

    Raises:
        UserInputError: `multiple` < 1, unknown mode, or reflect padding wider than the image allows.
    """
    if multiple < 1:
        raise UserInputError(f"size multiple {multiple} must be a positive integer")
    if mode not in PAD_MODES:
        raise UserInputError(f"padding mode {mode!r} is not supported; choose one of {', '.join(PAD_MODES)}")
    if x.dim() < 2:
        raise UserInputError(f"cannot pad a tensor of shape {tuple(x.shape)}: need (..., H, W)")
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    top, left = pad_h // 2, pad_w // 2
    bottom, right = pad_h - top, pad_w - left
    crop = (Ellipsis, slice(top, top + height), slice(left, left + width))
    if pad_h == 0 and pad_w == 0:
        return x, crop
    if mode == "reflect" and (max(top, bottom) >= height or max(left, right) >= width):
        raise UserInputError(
            f"image of {height}x{width} is too small to reflect-pad to a multiple of {multiple}; "
            "use mode='replicate' or 'constant'"
        )
    # F.pad's non-constant modes want a batch dimension: flatten leading dims to (N, 1, H, W) and back.
    lead = x.shape[:-2]
    flat = x.reshape(-1, 1, height, width)
    padded = F.pad(flat, (left, right, top, bottom), mode=mode)
    return padded.reshape(*lead, height + pad_h, width + pad_w), crop


def check_size_multiple(x: Tensor, multiple: int, model: str) -> None:
    """Raise `UserInputError` unless H and W of the (B, C, H, W) input `x` are multiples of `multiple`."""
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise UserInputError(
            f"{model}: input of {height}x{width} pixels is not a multiple of {multiple}; pad it first "
            "(celltune.trainables.layers.padding.pad_to_multiple)"
        )
