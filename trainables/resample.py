"""Resampling frames and targets by a per-dataset scale, so cells have a similar size in pixels across datasets.

Cellpose rescales every image to a common cell diameter; celltune lets a config name a ``data.scale`` per
dataset (0.5 halves each side). Training crops are read at the original resolution and resampled; inference
resamples the normalized frame, predicts, and resamples the probabilities back, so post-processing thresholds
and scores stay in the original pixels. Images use antialiased bilinear interpolation; class maps are resampled
as per-class shares and thin classes (the tertiary boundary) are kept where they cover a share of a pixel, so a
two-pixel boundary between touching cells survives a downscale instead of vanishing under nearest neighbour.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# A resampled pixel is boundary when boundary covers at least this share of it (else the majority class wins).
THIN_CLASS_SHARE = 0.3


def scaled_side(side: int, scale: float) -> int:
    """The side of ``side`` pixels after resampling by ``scale`` (at least one pixel)."""
    return max(1, round(side * scale))


def source_side(side: int, scale: float) -> int:
    """Original pixels to read so that resampling by ``scale`` gives ``side`` pixels."""
    return max(1, round(side / scale))


def _interpolate(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resampling of the last two axes of a float array."""
    lead = array.shape[:-2]
    flat = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).reshape(1, -1, *array.shape[-2:])
    shrinking = shape[0] < array.shape[-2] or shape[1] < array.shape[-1]
    out = F.interpolate(flat, size=shape, mode="bilinear", align_corners=False, antialias=shrinking)
    return out.reshape(*lead, *shape).numpy()


def resize_images(images: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Intensities (any leading axes) to ``shape`` on the last two axes."""
    if tuple(images.shape[-2:]) == tuple(shape):
        return images.astype(np.float32, copy=False)
    return _interpolate(images, shape)


def resize_probabilities(probabilities: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(N, C, h, w)`` probabilities back to ``(N, C, *shape)``; bilinear keeps softmax columns summing to 1."""
    if tuple(probabilities.shape[-2:]) == tuple(shape):
        return probabilities
    return np.clip(_interpolate(probabilities, shape), 0.0, 1.0)


def resize_classes(target: np.ndarray, shape: tuple[int, int], classes: int, thin_class: int | None) -> np.ndarray:
    """A class map (values ``0..classes-1``) resampled through per-class shares.

    Each class's share of an output pixel is its antialiased one-hot average; the pixel takes ``thin_class``
    where that share reaches :data:`THIN_CLASS_SHARE`, else the class with the largest share.
    """
    if tuple(target.shape[-2:]) == tuple(shape):
        return target
    one_hot = np.stack([target == value for value in range(classes)], axis=-3).astype(np.float32)
    shares = _interpolate(one_hot, shape)
    out = shares.argmax(axis=-3)
    if thin_class is not None:
        out[shares[..., thin_class, :, :] >= THIN_CLASS_SHARE] = thin_class
    return out.astype(target.dtype)


def resize_masks(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Binary float masks (mask and marker channels) resampled and thresholded at one half."""
    if tuple(masks.shape[-2:]) == tuple(shape):
        return masks
    return (_interpolate(masks, shape) >= 0.5).astype(masks.dtype)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels by nearest neighbour (ids are not averaged)."""
    if tuple(labels.shape[-2:]) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * labels.shape[-2] / shape[0]).astype(int), labels.shape[-2] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * labels.shape[-1] / shape[1]).astype(int), labels.shape[-1] - 1)
    return labels[..., rows[:, None], cols[None, :]]
