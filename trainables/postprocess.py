"""Network outputs -> instance labels for the three target kinds (tertiary, mask + marker, binary).

Every function takes per-pixel probabilities ``(C, Y, X)`` or ``(C, Z, Y, X)`` as a numpy array (3D is
labelled with 3D connectivity) and returns sequentially numbered int32 instance labels of the spatial shape.
Areas are in pixels (voxels in 3D). The thresholds' defaults in the signatures are generic, deliberately below the
paper's HeLa values (500 px objects, 100 px holes at 512x512): 32 px drops speckle but keeps the smallest real CTC
cells (about 100 px in Fluo-N2DL-HeLa / PSC) and cells cut by the image edge; grow = 0 as in XB-Net; thresholds
0.5 are the natural sigmoid/softmax cut. The search tunes them per dataset. Which function serves which target
kind, and the dispatcher ``postprocess``, live in :mod:`celltune.trainables.target_kinds`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import morphology, segmentation
from skimage.feature import peak_local_max

from celltune.data_prep.common import UserInputError

logger = logging.getLogger(__name__)

def _check_int(kind: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise UserInputError(f"{kind} post-processing: {name}={value!r} must be an integer >= {minimum}")
    return int(value)


def _check_probability(kind: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not 0.0 <= value <= 1.0:
        raise UserInputError(f"{kind} post-processing: {name}={value!r} must be a number in [0, 1]")
    return float(value)


def _check_bool(kind: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise UserInputError(f"{kind} post-processing: {name}={value!r} must be true or false")
    return bool(value)


def _check_probs(kind: str, probs: Any, channels: int) -> np.ndarray:
    probs = np.asarray(probs)
    if probs.ndim not in (3, 4) or probs.shape[0] != channels:
        raise UserInputError(
            f"{kind} post-processing: probabilities have shape {probs.shape}; expected ({channels}, Y, X) "
            f"or ({channels}, Z, Y, X)"
        )
    if not np.issubdtype(probs.dtype, np.floating):
        raise UserInputError(f"{kind} post-processing: probabilities have dtype {probs.dtype}; expected float")
    return probs


def _face(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, 1)


def _full(ndim: int) -> np.ndarray:
    return np.ones((3,) * ndim, dtype=bool)


def _box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` pixels (clipped to the image).

    Distance transforms and watersheds inside it equal those over the whole image (the extra pixel supplies
    the background the distance is measured to), as do closings with a radius below ``margin``, and sparse
    frames, e.g. 1024x1024 GOWT1, become cheap.
    """
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _remove_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Zero every object with fewer than ``min_area`` pixels."""
    if min_area <= 1 or not labels.any():
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    if small.any():
        labels = np.where(small[labels], 0, labels)
    return labels


def _fill_small_holes(labels: np.ndarray, hole_area: int) -> np.ndarray:
    """Give each background region below ``hole_area`` pixels, enclosed by one single object, to that object.

    Regions touching the image edge are not holes; a gap enclosed by two touching objects stays background.
    """
    if hole_area <= 1:
        return labels
    background = labels == 0
    # Background is connected in the complement of the objects' face connectivity: full connectivity.
    holes, n = ndimage.label(background, structure=_full(labels.ndim))
    if n == 0:
        return labels
    sizes = np.bincount(holes.ravel(), minlength=n + 1)
    candidate = sizes < hole_area
    candidate[0] = False
    for axis in range(labels.ndim):
        for side in (0, -1):
            candidate[np.take(holes, side, axis=axis)] = False
    if not candidate.any():
        return labels
    # Lowest and highest object id face-adjacent to each hole: equal means one enclosing object.
    sentinel = np.iinfo(np.int64).max
    lowest = np.full(n + 1, sentinel, dtype=np.int64)
    highest = np.zeros(n + 1, dtype=np.int64)
    for axis in range(labels.ndim):
        size = labels.shape[axis]
        head = (slice(None),) * axis + (slice(0, size - 1),)
        tail = (slice(None),) * axis + (slice(1, size),)
        for here, there in ((head, tail), (tail, head)):
            hole_ids, object_ids = holes[here], labels[there]
            keep = candidate[hole_ids] & (object_ids > 0)
            np.minimum.at(lowest, hole_ids[keep], object_ids[keep])
            np.maximum.at(highest, hole_ids[keep], object_ids[keep])
    fill = candidate & (lowest == highest)
    if not fill.any():
        return labels
    owner = np.where(fill, highest, 0).astype(labels.dtype)
    return np.where(background, owner[holes], labels)


def _finish(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Drop small objects and number the rest 1..N (a bincount lookup table: skimage's relabel_sequential
    sorts all pixels and costs about 10 ms on a 700x700 frame)."""
    labels = _remove_small(labels, min_area)
    if not labels.any():
        return np.zeros(labels.shape, dtype=np.int32)
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    table = np.zeros(present.size, dtype=np.int32)
    table[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return table[labels]


def tertiary_to_instances(probs: np.ndarray, min_area: int = 32, hole_area: int = 32, grow: int = 0) -> np.ndarray:
    """Instances from background / boundary / cell probabilities (XB-Net post-processing, Guo et al.).

    A pixel is cell when its cell score beats both others (ties are not cell); cell pixels are split into
    face-connected components; objects below ``min_area`` are removed; background holes below
    ``hole_area`` enclosed by one object are filled; with ``grow > 0`` each object then spreads into
    adjacent boundary-class pixels by up to ``grow`` steps (geodesic, ties to the nearest object), which
    gives back the contact ring that the target marks as boundary between touching cells.

    Args:
        probs: ``(3, Y, X)`` or ``(3, Z, Y, X)`` scores in channel order background, boundary, cell.
        min_area: smallest object kept, in pixels (default 32).
        hole_area: holes smaller than this are filled (default 32).
        grow: pixels to grow into the boundary class; 0 = off, as in the paper.

    Returns:
        int32 instance labels of the spatial shape, numbered 1..N.

    Raises:
        UserInputError: wrong probability shape/dtype or a bad parameter value.
    """
    kind = "tertiary"
    probs = _check_probs(kind, probs, 3)
    min_area = _check_int(kind, "min_area", min_area, 0)
    hole_area = _check_int(kind, "hole_area", hole_area, 0)
    grow = _check_int(kind, "grow", grow, 0)
    background, boundary, cell_score = probs
    cell = (cell_score > background) & (cell_score > boundary)
    labels, _ = ndimage.label(cell, structure=_face(cell.ndim))
    labels = _remove_small(labels, min_area)
    labels = _fill_small_holes(labels, hole_area)
    if grow:
        boundary_class = (boundary >= background) & (boundary >= cell_score) & (labels == 0)
        for _ in range(grow):
            grown = segmentation.expand_labels(labels, distance=1)
            labels = np.where(boundary_class & (labels == 0), grown, labels)
    return _finish(labels, 0)


def mask_marker_to_instances(
    probs: np.ndarray, mask_threshold: float = 0.5, marker_threshold: float = 0.5, min_area: int = 32
) -> np.ndarray:
    """Instances from cell-mask and marker probabilities (U-SE-ResNet post-processing).

    Connected components (full connectivity) of the thresholded markers inside the mask seed a watershed
    on the negative distance transform of the mask; mask regions no marker reaches are dropped (a mask blob
    without a marker is treated as noise); objects below ``min_area`` are removed.

    Args:
        probs: ``(2, Y, X)`` or ``(2, Z, Y, X)`` sigmoid outputs, channel 0 mask, channel 1 marker.
        mask_threshold: mask probability above which a pixel is cell (default 0.5).
        marker_threshold: marker probability above which a pixel is marker (default 0.5).
        min_area: smallest object kept, in pixels (default 32).

    Returns:
        int32 instance labels of the spatial shape, numbered 1..N.

    Raises:
        UserInputError: wrong probability shape/dtype or a bad parameter value.
    """
    kind = "mask_marker"
    probs = _check_probs(kind, probs, 2)
    mask_threshold = _check_probability(kind, "mask_threshold", mask_threshold)
    marker_threshold = _check_probability(kind, "marker_threshold", marker_threshold)
    min_area = _check_int(kind, "min_area", min_area, 0)
    mask = probs[0] > mask_threshold
    marker = (probs[1] > marker_threshold) & mask
    labels = np.zeros(mask.shape, dtype=np.int32)
    if not marker.any():
        return labels
    box = _box(mask)
    seeds, _ = ndimage.label(marker[box], structure=_full(mask.ndim))
    distance = ndimage.distance_transform_edt(mask[box])
    labels[box] = segmentation.watershed(-distance, markers=seeds, mask=mask[box])
    return _finish(labels, min_area)


def binary_to_instances(
    probs: np.ndarray,
    threshold: float = 0.5,
    watershed: bool = False,
    min_distance: int = 5,
    min_area: int = 32,
    closing: int = 0,
) -> np.ndarray:
    """Instances from background / foreground probabilities (U-Net style binary output).

    The binary U-Net baseline's post-processing: threshold, morphological closing of the foreground with a disk
    (a ball in 3D) of radius ``closing`` (bridges thin gaps and fills small dents in a cell), connected components,
    and an area opening (``min_area``: components smaller than that are removed). The closing ignores what lies
    outside the image (skimage ``mode="ignore"``), so cells cut by the image edge are not eroded there. With
    ``watershed=True`` each component is further split by a watershed on its negative distance transform seeded
    at distance maxima at least ``min_distance`` pixels apart (separates touching round cells).

    Args:
        probs: ``(2, Y, X)`` or ``(2, Z, Y, X)`` softmax outputs, channel 1 = foreground.
        threshold: foreground probability above which a pixel is cell (default 0.5).
        watershed: split touching objects by a distance-transform watershed (default False).
        min_distance: minimum distance between watershed seeds in pixels (default 5).
        min_area: area opening: smallest object kept, in pixels (default 32).
        closing: radius in pixels of the closing's disk/ball; 0 = no closing (default).

    Returns:
        int32 instance labels of the spatial shape, numbered 1..N.

    Raises:
        UserInputError: wrong probability shape/dtype or a bad parameter value.
    """
    kind = "binary"
    probs = _check_probs(kind, probs, 2)
    threshold = _check_probability(kind, "threshold", threshold)
    use_watershed = _check_bool(kind, "watershed", watershed)
    min_distance = _check_int(kind, "min_distance", min_distance, 1)
    min_area = _check_int(kind, "min_area", min_area, 0)
    closing = _check_int(kind, "closing", closing, 0)
    foreground = probs[1] > threshold
    if closing and foreground.any():
        footprint = morphology.disk(closing) if foreground.ndim == 2 else morphology.ball(closing)
        box = _box(foreground, margin=closing + 1)
        foreground[box] = morphology.closing(foreground[box], footprint, mode="ignore")
    labels, n = ndimage.label(foreground, structure=_face(foreground.ndim))
    if use_watershed and n:
        labels = _remove_small(labels, min_area)  # no seeds in speckle
        if labels.any():
            box = _box(labels > 0)
            components = labels[box]
            distance = ndimage.distance_transform_edt(components > 0)
            peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
            seed_mask = np.zeros(components.shape, dtype=bool)
            seed_mask[tuple(peaks.T)] = True
            # Plateau maxima give several adjacent peaks: one seed per connected group.
            seeds, _ = ndimage.label(seed_mask, structure=_full(foreground.ndim))
            split = segmentation.watershed(-distance, markers=seeds, mask=components > 0)
            # A component without any peak (only when it is tiny) keeps its own id, offset past the seeds.
            orphan = (split == 0) & (components > 0)
            if orphan.any():
                split = np.where(orphan, components + int(split.max()), split)
            labels = np.zeros(labels.shape, dtype=np.int32)
            labels[box] = split
    return _finish(labels, min_area)


def one_hot(classes: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, *classes.shape)`` float32 one-hot of an integer class map (a "perfect prediction")."""
    classes = np.asarray(classes)
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise UserInputError(f"one_hot: n_classes={n_classes!r} must be >= 1")
    return (np.arange(n_classes).reshape((n_classes,) + (1,) * classes.ndim) == classes).astype(np.float32)


def postprocess(target_kind: str, probs: np.ndarray, **params: Any) -> np.ndarray:
    """:func:`celltune.trainables.target_kinds.postprocess`, also importable from here, where the pyfunc code
    frozen into versions registered before the kinds' table (2026-12-04) looks for it."""
    from celltune.trainables.target_kinds import postprocess as dispatch  # the table imports this module

    return dispatch(target_kind, probs, **params)
