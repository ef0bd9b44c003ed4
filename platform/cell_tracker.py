"""Link instance masks frame to frame into CTC tracks (label, begin, end, parent), in 2D or 3D.

Each pair of consecutive frames is one assignment problem (``scipy.optimize.linear_sum_assignment``):
overlapping objects are linked by IoU, objects that do not overlap enough fall back to centroid distance
within ``max_displacement``; every overlap link is preferred to every distance link. A division is a
parent linked to one object in the next frame with a second, unlinked object next to it: the parent's
track ends and two daughter tracks begin with the parent's label as P. Unlinked objects start new tracks,
objects with no successor end theirs. There is no gap closing: in TRA (AOGM) a link across a gap that the
reference does not have costs an extra edge, so a track simply ends and a new one starts, which the CTC
rules allow (a track's label is in every frame from B to E and nowhere else).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from celltune.data_prep.common import UserInputError

logger = logging.getLogger(__name__)

_FORBIDDEN = 1e6  # cost of a pair outside the gates; finite so that linear_sum_assignment stays feasible
# A parent whose linked successor still overlaps it this well (IoU) has not divided: real divisions measured
# on CTC GT (DIC-C2DH-HeLa, Fluo-N2DH-GOWT1, Fluo-N2DH-SIM+) leave the larger daughter at IoU <= 0.59 with
# the parent, while a cell that merely keeps its place next to a newcomer stays near 1.
_UNDIVIDED_IOU = 0.7
_DENSE_LABEL_LIMIT = 1 << 24  # above this largest label, compact labels with np.unique instead of a LUT


@dataclass(frozen=True)
class TrackingResult:
    """Masks relabelled by track id and the CTC track table.

    Attributes:
        masks: ``(T, Y, X)`` or ``(T, Z, Y, X)`` int32; 0 is background, other values are track labels.
        tracks: ``(N, 4)`` int64, one row ``L B E P`` per track (label, first and last frame, parent or 0).
    """

    masks: np.ndarray
    tracks: np.ndarray

    @property
    def num_divisions(self) -> int:
        """Number of parents with two daughters."""
        parents, counts = np.unique(self.tracks[self.tracks[:, 3] > 0, 3], return_counts=True)
        return int(np.sum(counts >= 2)) if parents.size else 0


@dataclass(frozen=True)
class _Frame:
    """One frame's objects, stored sparsely: flat indices of foreground pixels and their compact ids 1..n."""

    shape: tuple[int, ...]
    index: np.ndarray  # flat indices of the foreground pixels, ascending
    labels: np.ndarray  # compact id (1..n) of each foreground pixel
    ids: np.ndarray  # original id of compact object k at ids[k - 1]
    areas: np.ndarray
    centroids: np.ndarray  # (n, ndim), multiplied by the spacing

    @property
    def n(self) -> int:
        return int(self.ids.size)

    def dense(self) -> np.ndarray:
        """The compact label image, flattened."""
        out = np.zeros(int(np.prod(self.shape)), dtype=np.int32)
        out[self.index] = self.labels
        return out


def _objects(frame: np.ndarray, spacing: np.ndarray) -> _Frame:
    flat = frame.ravel()
    index = np.flatnonzero(flat)
    values = flat[index]
    high = int(values.max()) if values.size else 0
    if high < _DENSE_LABEL_LIMIT:
        counts = np.bincount(values, minlength=high + 1)
        ids = np.flatnonzero(counts)
        lut = np.zeros(high + 1, dtype=np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        labels = lut[values]
        areas = counts[ids]
    else:
        ids, inverse, areas = np.unique(values, return_inverse=True, return_counts=True)
        labels = inverse.astype(np.int32) + 1
    n = ids.size
    centroids = np.zeros((n, frame.ndim))
    if n:
        for axis, coords in enumerate(np.unravel_index(index, frame.shape)):
            sums = np.bincount(labels, weights=coords, minlength=n + 1)[1:]
            centroids[:, axis] = sums / areas * spacing[axis]
    return _Frame(shape=frame.shape, index=index, labels=labels, ids=ids.astype(np.int64),
                  areas=areas.astype(np.int64), centroids=centroids)


def _intersections(a: _Frame, b: _Frame, a_dense: np.ndarray) -> sparse.csr_matrix:
    """Pixel counts shared by object i of ``a`` and object j of ``b`` as an ``(n_a, n_b)`` sparse matrix."""
    under = a_dense[b.index]
    both = under > 0
    rows = under[both].astype(np.int64) - 1
    cols = b.labels[both].astype(np.int64) - 1
    ones = np.ones(rows.size, dtype=np.int64)
    return sparse.coo_matrix((ones, (rows, cols)), shape=(a.n, b.n)).tocsr()  # duplicates are summed


def _solve(rows: np.ndarray, cols: np.ndarray, costs: np.ndarray, n_rows: int, n_cols: int) -> list[tuple[int, int]]:
    """Minimum-cost assignment over the allowed pairs, solved per connected group of candidates."""
    if rows.size == 0:
        return []
    graph = sparse.coo_matrix((np.ones(rows.size), (rows, cols + n_rows)), shape=(n_rows + n_cols,) * 2)
    _, group = connected_components(graph, directed=False)
    order = np.argsort(group[rows], kind="stable")
    rows, cols, costs = rows[order], cols[order], costs[order]
    bounds = np.flatnonzero(np.diff(group[rows])) + 1
    pairs: list[tuple[int, int]] = []
    for r, c, w in zip(np.split(rows, bounds), np.split(cols, bounds), np.split(costs, bounds), strict=True):
        ur, ri = np.unique(r, return_inverse=True)
        uc, ci = np.unique(c, return_inverse=True)
        matrix = np.full((ur.size, uc.size), _FORBIDDEN)
        matrix[ri, ci] = w
        for i, j in zip(*linear_sum_assignment(matrix), strict=True):
            if matrix[i, j] < _FORBIDDEN:
                pairs.append((int(ur[i]), int(uc[j])))
    return pairs


def _link(a: _Frame, b: _Frame, inter: sparse.csr_matrix, max_displacement: float,
          min_overlap: float) -> list[tuple[int, int]]:
    """Pairs (i, j) linking objects of ``a`` to objects of ``b``: IoU first, then centroid distance."""
    candidates: dict[tuple[int, int], float] = {}
    coo = inter.tocoo()
    iou = coo.data / (a.areas[coo.row] + b.areas[coo.col] - coo.data)
    for i, j, v in zip(coo.row, coo.col, iou, strict=True):
        if v >= min_overlap:
            candidates[(int(i), int(j))] = 1.0 - float(v)  # in [0, 1 - min_overlap]
    if a.n and b.n:
        near = cKDTree(a.centroids).sparse_distance_matrix(cKDTree(b.centroids), max_displacement,
                                                            output_type="ndarray")
        for i, j, d in near:
            candidates.setdefault((int(i), int(j)), 1.0 + float(d) / max_displacement)  # in [1, 2]
    if not candidates:
        return []
    keys = np.array(list(candidates), dtype=np.int64).reshape(-1, 2)
    costs = np.fromiter(candidates.values(), dtype=np.float64, count=len(candidates))
    return _solve(keys[:, 0], keys[:, 1], costs, a.n, b.n)


def _divisions(a: _Frame, b: _Frame, inter: sparse.csr_matrix, links: list[tuple[int, int]],
               max_displacement: float, min_overlap: float) -> list[tuple[int, int]]:
    """Pairs (parent i of ``a``, second daughter j of ``b``) for linked parents with an unlinked neighbour.

    A candidate daughter lies mostly inside the parent (intersection / daughter area >= ``min_overlap``) or
    its centroid is within ``max_displacement`` of the parent's; the two daughters must also sit on either
    side of the parent (their midpoint within ``max_displacement / 2``), and the first daughter must differ
    from the parent (IoU below 0.7), which tells a division apart from a cell that keeps its place while
    another appears next to it.
    """
    taken = {j for _, j in links}
    free = np.array([j for j in range(b.n) if j not in taken], dtype=np.int64)
    if free.size == 0:
        return []
    first = {}
    for i, j in links:
        shared = inter[i, j]
        if shared / (a.areas[i] + b.areas[j] - shared) < _UNDIVIDED_IOU:
            first[i] = j
    if not first:
        return []
    parents = np.array(sorted(first), dtype=np.int64)
    shared = inter[parents][:, free].tocsr()
    overlapping = shared.tocoo()
    near = cKDTree(a.centroids[parents]).sparse_distance_matrix(cKDTree(b.centroids[free]), max_displacement,
                                                                output_type="ndarray")
    pairs = np.unique(np.concatenate([np.stack([overlapping.row, overlapping.col], axis=1),
                                      np.stack([near["i"], near["j"]], axis=1)]).astype(np.int64), axis=0)
    if pairs.size == 0:
        return []
    rows, cols = pairs[:, 0], pairs[:, 1]
    cover = np.asarray(shared[rows, cols]).ravel() / b.areas[free[cols]]
    parent_at, daughter_at = a.centroids[parents[rows]], b.centroids[free[cols]]
    sister_at = b.centroids[[first[int(parents[r])] for r in rows]]
    dist = np.linalg.norm(daughter_at - parent_at, axis=1)
    midpoint = np.linalg.norm((sister_at + daughter_at) / 2 - parent_at, axis=1)
    keep = ((cover >= min_overlap) | (dist <= max_displacement)) & (midpoint <= max_displacement / 2)
    rows, cols, cover, dist = rows[keep], cols[keep], cover[keep], dist[keep]
    costs = np.where(cover >= min_overlap, 1.0 - cover, 1.0 + dist / max_displacement)
    return [(int(parents[r]), int(free[c])) for r, c in _solve(rows, cols, costs, parents.size, free.size)]


def _as_frames(masks: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray):
        if masks.ndim not in (3, 4):
            raise UserInputError(f"masks: array shape {masks.shape}; expected (T, Y, X) or (T, Z, Y, X)")
        frames = list(masks)
    else:
        frames = [np.asarray(m) for m in masks]
    if not frames:
        raise UserInputError("masks: empty sequence; expected at least one frame")
    shape = frames[0].shape
    for t, frame in enumerate(frames):
        if frame.ndim not in (2, 3):
            raise UserInputError(f"masks[{t}]: shape {frame.shape}; expected a 2D (Y, X) or 3D (Z, Y, X) frame")
        if frame.shape != shape:
            raise UserInputError(f"masks[{t}]: shape {frame.shape} differs from frame 0 {shape}")
        if frame.dtype.kind not in "iu":
            raise UserInputError(f"masks[{t}]: label image has {frame.dtype} dtype; expected integer ids")
        if frame.dtype.kind == "i" and frame.size and int(frame.min()) < 0:
            raise UserInputError(f"masks[{t}]: negative label {int(frame.min())}; ids must be >= 0")
    return frames


def track_sequence(
    masks: Sequence[np.ndarray] | np.ndarray,
    *,
    max_displacement: float = 50.0,
    min_overlap: float = 0.1,
    divisions: bool = True,
    spacing: Sequence[float] | None = None,
    show_progress: bool = False,
) -> TrackingResult:
    """Link the instances of a sequence of label images into tracks and relabel them by track id.

    Args:
        masks: ``T`` label images ``(Y, X)`` or ``(Z, Y, X)`` (a list or a ``(T, ...)`` array); 0 is
            background, each positive id one object in that frame (ids need not agree across frames).
        max_displacement: largest centroid shift between frames for a link without enough overlap, in
            pixels (times ``spacing``); also gates daughters of a division. Default 50.
        min_overlap: smallest IoU for an overlap link, and smallest fraction of a daughter inside its
            parent for an overlap-based division. Default 0.1.
        divisions: detect divisions (one object to two); when False every extra object starts a new track.
        spacing: physical size of a pixel per axis of a frame (e.g. ``(2.0, 1.0, 1.0)`` for anisotropic z);
            default 1 on every axis.
        show_progress: show a tqdm bar over frames.

    Returns:
        TrackingResult with int32 masks ``(T, ...)`` relabelled by track label (1, 2, ... in order of
        appearance) and the ``(N, 4)`` table ``L B E P`` that satisfies the CTC rules.

    Raises:
        UserInputError: empty input, frames of different shapes or dimensions, non-integer or negative
            labels, or a parameter out of range.
    """
    if not max_displacement > 0:
        raise UserInputError(f"max_displacement={max_displacement}: must be > 0 pixels")
    if not 0 < min_overlap <= 1:
        raise UserInputError(f"min_overlap={min_overlap}: must be in (0, 1]")
    frames = _as_frames(masks)
    ndim = frames[0].ndim
    scale = np.ones(ndim) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (ndim,) or not np.all(scale > 0):
        raise UserInputError(f"spacing={spacing}: expected {ndim} positive values, one per frame axis")

    from tqdm.auto import tqdm

    out = np.zeros((len(frames), *frames[0].shape), dtype=np.int32)
    rows: list[list[int]] = []  # [L, B, E, P] per track; label = index + 1

    def start(t: int, parent: int) -> int:
        rows.append([len(rows) + 1, t, t, parent])
        return len(rows)

    previous: _Frame | None = None
    previous_tracks = np.zeros(0, dtype=np.int64)
    for t, frame in enumerate(tqdm(frames, desc="tracking", unit="frame", disable=None if show_progress else True)):
        current = _objects(frame, scale)
        tracks = np.zeros(current.n, dtype=np.int64)
        if previous is not None and previous.n and current.n:
            inter = _intersections(previous, current, previous.dense())
            links = _link(previous, current, inter, max_displacement, min_overlap)
            splits = dict(_divisions(previous, current, inter, links, max_displacement, min_overlap)
                          if divisions else [])
            for i, j in links:
                parent = int(previous_tracks[i])
                if i in splits:
                    tracks[j] = start(t, parent)
                    tracks[splits[i]] = start(t, parent)
                else:
                    tracks[j] = parent
                    rows[parent - 1][2] = t
        for j in np.flatnonzero(tracks == 0):
            tracks[j] = start(t, 0)
        if len(rows) > np.iinfo(np.int32).max:
            raise UserInputError(f"masks: more than {np.iinfo(np.int32).max} tracks")
        out[t].reshape(-1)[current.index] = tracks[current.labels - 1]
        previous, previous_tracks = current, tracks

    table = np.array(rows, dtype=np.int64).reshape(-1, 4)
    result = TrackingResult(masks=out, tracks=table)
    logger.info("tracked %d frames: %d tracks, %d divisions", len(frames), len(table), result.num_divisions)
    return result
