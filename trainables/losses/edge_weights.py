"""Edge-distance weight maps for the edge-weighted BCE (U-SE-ResNet), in numpy so data loaders and workers
can compute them next to the targets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.segmentation import find_boundaries

from celltune.data_prep.common import UserInputError


def edge_distance_weights(labels: np.ndarray, sampling: float | Sequence[float] | None = None) -> np.ndarray:
    """w = (d_max - d) / d_max with d the Euclidean distance to the nearest label edge.

    Edges are the pixels on either side of a change of label (cell/background and cell/cell contacts,
    ``find_boundaries(mode="thick")``), so they get w = 1 and w falls linearly to 0 at the pixel farthest from
    any edge. d_max is the largest d in the array given: pass one 2D image or one 3D volume at a time (for
    slice-wise training pass the slice). An array without edges (all background, or one label filling it)
    gets uniform weights 1.

    Args:
        labels: instance label image ``(H, W)`` or volume ``(Z, H, W)``, integer or bool.
        sampling: pixel/voxel size per axis for anisotropic volumes (scipy's ``sampling``); default isotropic.

    Returns:
        float32 array of the same shape with values in [0, 1].

    Raises:
        UserInputError: not 2D/3D, empty, or not an integer/bool array.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3) or labels.size == 0:
        raise UserInputError(f"edge_distance_weights: labels must be a non-empty 2D or 3D array, got {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise UserInputError(f"edge_distance_weights: label image has {labels.dtype} dtype; expected integer labels")
    edges = find_boundaries(labels, connectivity=1, mode="thick")
    if not edges.any() or edges.all():
        return np.ones(labels.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~edges, sampling=sampling)
    d_max = float(distance.max())
    return ((d_max - distance) / d_max).astype(np.float32)
