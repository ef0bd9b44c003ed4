"""Test-time augmentation: average a network's probabilities over the eight flips and 90-degree rotations of
its input (each mapped back), as nnU-Net's mirroring does. Cells have no preferred orientation, so the
average removes the network's orientation-dependent errors at 8x the forward passes; training already
augments with the same transforms (``data.augment.flips_and_rotations``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# (quarter turns, flip of the last axis first): the dihedral group of the square
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((turns, flip) for flip in (False, True) for turns in range(4))


def transform(images: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """Flip (last axis), then rotate by ``turns`` quarter turns in the last two axes."""
    out = images[..., ::-1] if flip else images
    return np.rot90(out, turns, axes=(-2, -1))


def untransform(images: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """The inverse of :func:`transform` on the last two axes (channels in front stay where they are)."""
    out = np.rot90(images, -turns, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def with_tta(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
             transforms: tuple[tuple[int, bool], ...] = DIHEDRAL) -> np.ndarray:
    """The mean of ``predict`` over ``transforms`` of ``images`` ``(N, H, W)``, each output ``(N, C, h, w)``
    mapped back to the input's orientation."""
    total: np.ndarray | None = None
    for turns, flip in transforms:
        out = untransform(predict(np.ascontiguousarray(transform(images, turns, flip))), turns, flip)
        total = out.astype(np.float32, copy=True) if total is None else total + out
    assert total is not None
    return total / np.float32(len(transforms))
