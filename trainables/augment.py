"""Geometric and intensity augmentations that training crops draw: rotation, elastic deformation, noise.

A geometric transform is sampled first as a :class:`Warp`, the source coordinates of every output pixel of a
square crop, so the loader knows how much context to read around the crop (``border``) before reading it; the
same warp then moves the image (linear interpolation) and every target and label map (nearest neighbour, so
no new class or label values appear). Reading real context instead of filling keeps corners free of empty
wedges; what still falls outside the frame was already mirrored by the loader, and ``map_coordinates`` mirrors
the rest.

Elastic deformation follows Simard, Steinkraus and Platt (ICDAR 2003): a field of uniform noise in [-1, 1] per
axis, smoothed by a Gaussian of std ``sigma`` and scaled by ``alpha`` pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from celltune.data_prep.common import UserInputError


@dataclass(frozen=True)
class Warp:
    """Where each pixel of a ``size`` x ``size`` output crop reads from.

    Attributes:
        coords: ``(2, size, size)`` float source (y, x) of every output pixel, in the output crop's frame
            (pixel (0, 0) of the crop is (0, 0); sources may lie outside it).
        border: context needed on every side: the source array is the crop grown by ``border`` pixels.
    """

    coords: np.ndarray
    border: int

    @property
    def size(self) -> int:
        return int(self.coords.shape[-1])

    @property
    def source_size(self) -> int:
        """Side of the source window the warp reads: the crop plus ``border`` on both sides."""
        return self.size + 2 * self.border


def identity_coords(size: int) -> np.ndarray:
    """``(2, size, size)`` coordinates of every pixel of the crop (the warp that changes nothing)."""
    grid = np.arange(size, dtype=np.float64)
    return np.stack(np.meshgrid(grid, grid, indexing="ij"))


def rotation_coords(size: int, degrees: float) -> np.ndarray:
    """Source coordinates rotating a ``size`` x ``size`` crop by ``degrees`` about its centre (counter-clockwise
    as displayed, y down)."""
    centre = (size - 1) / 2.0
    y, x = identity_coords(size) - centre
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    # With y pointing down, output pixel (y, x) shows the source at (cos y + sin x, cos x - sin y): the content
    # turns counter-clockwise on screen, like np.rot90 for a quarter turn.
    return np.stack([cos * y + sin * x, cos * x - sin * y]) + centre


def elastic_displacement(rng: np.random.Generator, size: int, alpha: float, sigma: float) -> np.ndarray:
    """``(2, size, size)`` displacement in pixels: ``alpha`` times uniform [-1, 1] noise smoothed with std ``sigma``.

    Raises:
        UserInputError: negative ``alpha`` or non-positive ``sigma``.
    """
    if alpha < 0 or sigma <= 0:
        raise UserInputError(f"elastic deformation: alpha={alpha} must be >= 0 and sigma={sigma} > 0")
    noise = rng.uniform(-1.0, 1.0, (2, size, size))
    return np.stack([ndimage.gaussian_filter(axis, sigma, mode="reflect") for axis in noise]) * alpha


def make_warp(coords: np.ndarray) -> Warp:
    """A :class:`Warp` for source ``coords``, with the border that holds every source pixel (and its
    interpolation neighbours)."""
    size = coords.shape[-1]
    reach = max(0.0, float(-coords.min()), float(coords.max()) - (size - 1))
    # The tolerance keeps exact grid maps (a quarter turn) from asking a pixel more for float round-off.
    return Warp(coords=coords, border=int(math.ceil(reach - 1e-6)))


def sample_warp(rng: np.random.Generator, size: int, *, rotation_p: float = 0.0, rotation_max_degrees: float = 180.0,
                elastic_p: float = 0.0, elastic_alpha: float = 0.0, elastic_sigma: float = 1.0) -> Warp | None:
    """Draw a rotation and/or an elastic deformation of a ``size`` x ``size`` crop, or None when neither is drawn.

    With both probabilities 0 this draws nothing from ``rng``, so turning the options off reproduces earlier
    crops exactly.

    Args:
        rng: the crop stream's generator.
        size: side of the output crop (the loss region plus its context margin).
        rotation_p: probability of a rotation by an angle uniform in +-``rotation_max_degrees``.
        elastic_p: probability of an elastic deformation with ``elastic_alpha`` and ``elastic_sigma``.
    """
    coords: np.ndarray | None = None
    if rotation_p > 0 and rng.random() < rotation_p:
        coords = rotation_coords(size, float(rng.uniform(-rotation_max_degrees, rotation_max_degrees)))
    if elastic_p > 0 and rng.random() < elastic_p:
        displacement = elastic_displacement(rng, size, elastic_alpha, elastic_sigma)
        coords = (identity_coords(size) if coords is None else coords) + displacement
    return None if coords is None else make_warp(coords)


def apply_warp(array: np.ndarray, warp: Warp, *, order: int) -> np.ndarray:
    """Resample ``array`` through ``warp`` on its last two axes.

    Args:
        array: ``(..., S + 2b, S + 2b)`` source window (``b = warp.border``), e.g. an image ``(1, ., .)``, a window
            of frames ``(T, 1, ., .)``, a target ``(., .)`` or ``(2, ., .)``.
        warp: the transform.
        order: 1 (linear) for images, 0 (nearest neighbour) for labels and targets, which keeps their dtype and
            creates no values that were not in the source.

    Returns:
        ``(..., S, S)`` array of the same dtype.
    """
    side = warp.source_size
    if array.shape[-2:] != (side, side):
        raise ValueError(f"warp reads a {side}x{side} window, got an array of shape {array.shape}")
    coords = warp.coords + warp.border
    flat = array.reshape(-1, side, side)
    out = np.empty((flat.shape[0], warp.size, warp.size), dtype=array.dtype)
    for index, plane in enumerate(flat):
        ndimage.map_coordinates(plane, coords, output=out[index], order=order, mode="mirror", prefilter=False)
    return out.reshape(*array.shape[:-2], warp.size, warp.size)


def add_noise(image: np.ndarray, rng: np.random.Generator, std: float, kind: str = "half_normal") -> np.ndarray:
    """``image`` plus noise of std ``std``: ``|N(0, std)|`` (``half_normal``, U-SE-ResNet) or ``N(0, std)``."""
    noise = rng.normal(0.0, std, image.shape)
    if kind == "half_normal":
        noise = np.abs(noise)
    elif kind != "gaussian":
        raise UserInputError(f"noise_kind={kind!r}: choose 'half_normal' or 'gaussian'")
    return image + noise.astype(np.float32)
