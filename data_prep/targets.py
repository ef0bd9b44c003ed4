"""Training targets computed from CTC instance labels: tertiary maps, mask + marker, U-Net weight maps.

All functions take one label image, 2D ``(Y, X)`` or 3D ``(Z, Y, X)``, of any integer dtype, with
0 = background and arbitrary (possibly gappy) positive ids. They run on every annotated frame during data
prep, so they only touch the neighbourhood of cells: cell bounding boxes come from one pass over runs of
equal labels, filters run on tiles around groups of nearby cells (CTC frames are often mostly background),
and per-cell loops touch only bounding boxes.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from scipy import ndimage

from celltune.data_prep.common import UserInputError

logger = logging.getLogger(__name__)

TERTIARY_BACKGROUND, TERTIARY_BOUNDARY, TERTIARY_CELL = 0, 1, 2

# U-SE-ResNet marker erosion (side of the square) per dataset; 3D datasets use 5 except Fluo-N3DH-CE.
_MARKER_EROSION = {
    "DIC-C2DH-HeLa": 20,
    "Fluo-N2DH-GOWT1": 10,
    "PhC-C2DH-U373": 2,
    "Fluo-N2DL-HeLa": 2,
    "Fluo-C2DL-MSC": 2,
    "PhC-C2DL-PSC": 5,
    "Fluo-N3DH-CE": 2,
}
_DEFAULT_MARKER_EROSION = 5
# Marker footprint depth along Z in 3D: CTC volumes are strongly anisotropic (Z steps several times the
# XY pixel size), so a full e x e x e cube would wipe out most cells; 3 slices still separates markers of
# cells stacked in Z.
_MARKER_Z_DEPTH = 3
# The U-Net border term is dropped where it is below this weight (absolute units; class weights are ~1).
_WEIGHT_TOLERANCE = 0.01
# Above this many cells, contact regions are not searched pair by pair: filters run on the foreground's box.
_MAX_TILED_CELLS = 2048
# Python-level cost of handling one region, in pixel equivalents (about 25 us against 5 ns per pixel).
_REGION_COST = 5000
# Python-level cost of one more tile, in pixel equivalents: narrower empty bands are not cut.
_TILE_COST = 16384
# tertiary_target looks for touching cells per pair of close cells when cells cover less than this share of
# their tiles, otherwise over the tiles.
_DENSE_SHARE = 0.5
# _box_reduce switches from one pass per offset to doubling windows above this width.
_DOUBLING_WIDTH = 6


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Reject what is not a 2D/3D non-negative integer label image."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise UserInputError(f"label image has non-integer dtype {labels.dtype}; expected uint8/uint16/int32")
    if labels.ndim not in (2, 3):
        raise UserInputError(f"label image has {labels.ndim} dimensions (shape {labels.shape}); expected 2 or 3")
    if labels.size and np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise UserInputError(f"label image has negative label {labels.min()}; labels must be >= 0")
    return labels


def _box_reduce(array: np.ndarray, size: tuple[int, ...], op: np.ufunc) -> np.ndarray:
    """Separable max/min over a box window, same result as ``ndimage.maximum_filter(size=size, mode="nearest")``.

    Done with in-place ufuncs on shifted views: 5-7x faster than scipy's rank filters for the small windows
    used here (a 5x5 maximum over a 1024x1024 uint16 frame: about 2.5 ms against 16 ms). Offsets that fall
    outside the image are skipped, which equals edge replication for max/min. Wide windows (marker erosion
    up to 20) double the covered width per pass instead of adding one offset per pass.
    """
    out = array.copy()
    for axis, width in enumerate(size):
        if width > _DOUBLING_WIDTH:
            out = _window_reduce_doubling(out, axis, width, op)
            continue
        before = width // 2  # scipy's centring: an even window reaches one pixel further back
        after = width - 1 - before
        source = out.copy() if width > 1 else out
        n = array.shape[axis]
        for shift in range(1, max(before, after) + 1):
            if shift >= n:
                break
            head = (slice(None),) * axis + (slice(0, n - shift),)
            tail = (slice(None),) * axis + (slice(shift, n),)
            if shift <= after:  # out[i] sees source[i + shift]
                op(out[head], source[tail], out=out[head])
            if shift <= before:  # out[i] sees source[i - shift]
                op(out[tail], source[head], out=out[tail])
    return out


def _window_reduce_doubling(array: np.ndarray, axis: int, width: int, op: np.ufunc) -> np.ndarray:
    """``op`` over a centred window of ``width`` along ``axis`` with edge replication, in log2(width) passes.

    The edge-padded line holds window i at ``[i, i + width)``; windows of 1, 2, 4, ... pixels are built by
    joining two halves, and the last step joins two overlapping power-of-two windows.
    """
    n = array.shape[axis]
    before = width // 2
    length = n + width - 1

    def part(start: int, stop: int) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(start, stop),)

    shape = list(array.shape)
    shape[axis] = length
    source = np.empty(shape, dtype=array.dtype)
    source[part(before, before + n)] = array
    source[part(0, before)] = array[part(0, 1)]
    source[part(before + n, length)] = array[part(n - 1, n)]
    target = np.empty_like(source)
    span = 1
    while 2 * span <= width:  # source[i] covers [i, i + span) for i <= length - span
        op(source[part(0, length - span)], source[part(span, length)], out=target[part(0, length - span)])
        source, target = target, source
        span *= 2
    rest = width - span
    if rest:
        return op(source[part(0, n)], source[part(rest, rest + n)])
    return np.ascontiguousarray(source[part(0, n)])


def _other_label_nearby(labels: np.ndarray, radius: int) -> np.ndarray:
    """True at cell pixels that see a different non-zero label inside a ``+-radius`` box window."""
    size = (2 * radius + 1,) * labels.ndim
    top = _box_reduce(labels, size, np.maximum)
    # 0 must not count as "smaller label": replace it by the dtype max before the minimum.
    nonzero = np.where(labels == 0, np.iinfo(labels.dtype).max, labels).astype(labels.dtype, copy=False)
    bottom = _box_reduce(nonzero, size, np.minimum)
    return (labels > 0) & ((top != labels) | (bottom != labels))


def _dilate_cross(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation by the cross (4/6-connected) element, ``iterations`` times, via shifted ORs."""
    out = mask.copy()
    for _ in range(iterations):
        source = out.copy()
        for axis in range(mask.ndim):
            n = mask.shape[axis]
            if n < 2:
                continue
            head = (slice(None),) * axis + (slice(0, n - 1),)
            tail = (slice(None),) * axis + (slice(1, n),)
            out[head] |= source[tail]
            out[tail] |= source[head]
    return out


def _crop_to_foreground(foreground: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the foreground grown by ``margin`` (sparse frames, e.g. GOWT1, are mostly empty)."""
    box = []
    for axis in range(foreground.ndim):
        other = tuple(a for a in range(foreground.ndim) if a != axis)
        hits = np.flatnonzero(foreground.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, foreground.shape[axis])))
    return tuple(box)


def _cell_boxes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids present (sorted) and their inclusive bounding boxes ``lo, hi`` of shape ``(n, ndim)``.

    Built from runs of equal labels along the last axis: one comparison pass and a few small arrays, several
    times faster than ``ndimage.find_objects`` on mostly empty frames.
    """
    width = labels.shape[-1]
    lines = labels.reshape(-1, width)
    change = np.empty((lines.shape[0], width + 1), dtype=bool)
    np.not_equal(lines[:, 0], 0, out=change[:, 0])
    np.not_equal(lines[:, -1], 0, out=change[:, width])
    np.not_equal(lines[:, 1:], lines[:, :-1], out=change[:, 1:width])
    line, col = np.divmod(np.flatnonzero(change), width + 1)
    after = lines[line, np.minimum(col, width - 1)]
    before = lines[line, np.maximum(col - 1, 0)]
    starts = (col < width) & (after != 0)
    ends = (col > 0) & (before != 0)
    run_line, run_first, run_label, run_last = line[starts], col[starts], after[starts], col[ends] - 1
    if run_label.size == 0:
        empty = np.zeros((0, labels.ndim), dtype=np.int64)
        return run_label, empty, empty
    order = np.argsort(run_label, kind="stable")
    run_label = run_label[order]
    first_run = np.flatnonzero(np.r_[True, run_label[1:] != run_label[:-1]])
    lead = np.unravel_index(run_line[order], labels.shape[:-1])
    lo = [np.minimum.reduceat(c, first_run) for c in lead] + [np.minimum.reduceat(run_first[order], first_run)]
    hi = [np.maximum.reduceat(c, first_run) for c in lead] + [np.maximum.reduceat(run_last[order], first_run)]
    return run_label[first_run], np.stack(lo, axis=1).astype(np.int64), np.stack(hi, axis=1).astype(np.int64)


def _box_pairs(lo: np.ndarray, hi: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of inclusive boxes whose gap is below ``reach`` along every axis, and the gaps ``(k, ndim)``.

    The gap along an axis is the distance between the nearest pixel centres (0 when the boxes overlap, 1 for
    adjacent pixels). Sweep along the first axis instead of comparing all n^2 pairs.
    """
    order = np.argsort(lo[:, 0], kind="stable")
    first = lo[order, 0]
    stop = np.searchsorted(first, hi[order, 0] + reach, side="left")
    count = np.maximum(stop - np.arange(order.size) - 1, 0)
    i = np.repeat(np.arange(order.size), count)
    j = i + 1 + np.arange(i.size) - np.repeat(np.cumsum(count) - count, count)
    i, j = order[i], order[j]
    gap = np.maximum(np.maximum(lo[j] - hi[i], lo[i] - hi[j]), 0)
    close = np.all(gap < reach, axis=1)
    i, j = np.minimum(i[close], j[close]), np.maximum(i[close], j[close])
    return i, j, gap[close]


def _groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Group index (the smallest member) of each of ``n`` nodes joined by the edges ``(i, j)``.

    Union-find by hooking roots onto the smaller root and pointer jumping; a few numpy passes over the edges
    (scipy's connected_components costs more in building its sparse matrix for the few cells of a frame).
    """
    parent = np.arange(n)
    while True:
        root_i, root_j = parent[i], parent[j]
        if np.array_equal(root_i, root_j):
            return parent
        low = np.minimum(root_i, root_j)
        np.minimum.at(parent, root_i, low)
        np.minimum.at(parent, root_j, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def _group_boxes(lo: np.ndarray, hi: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of each group of boxes."""
    count = int(group.max()) + 1
    out_lo = np.full((count, lo.shape[1]), np.iinfo(np.int64).max)
    out_hi = np.full((count, lo.shape[1]), np.iinfo(np.int64).min)
    np.minimum.at(out_lo, group, lo)
    np.maximum.at(out_hi, group, hi)
    return out_lo, out_hi


def _slices(lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...]:
    """Slices of the inclusive box ``lo..hi``."""
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))


def _foreground_tiles(foreground: np.ndarray, grow: int) -> list[tuple[slice, ...]]:
    """Disjoint boxes around the groups of foreground that wide bands of empty lines (``> 2 * grow``) separate.

    Recursive XY cut on the row/column profiles, each box grown by ``grow`` (clipped to the image). Within
    a tile every pixel's ``+-grow`` neighbourhood meets no other tile's foreground and the tile's rim is
    background (or the image edge), so window filters run per tile give the values of the whole image,
    and pixels outside all tiles have no foreground within ``grow``. Sparse frames (GOWT1 annotates a few
    nuclei of a 1024x1024 frame) shrink to a few small tiles; dense ones give the foreground's box.
    """
    tiles = []
    pending = [tuple(slice(0, n) for n in foreground.shape)]
    while pending:
        box = pending.pop()
        part = foreground[box]
        extent = []
        for axis in range(part.ndim):
            hits = np.flatnonzero(part.any(axis=tuple(a for a in range(part.ndim) if a != axis)))
            if hits.size == 0:
                break
            # Cut where the empty band is wider than both tiles' margins and saves more than a tile costs.
            saved = (np.diff(hits) - 1 - 2 * grow) * (part.size // part.shape[axis])
            cut = np.flatnonzero(saved > _TILE_COST)
            if cut.size:  # split along this axis; each piece is cut again along every axis
                starts, stops = hits[np.r_[0, cut + 1]], hits[np.r_[cut, hits.size - 1]] + 1
                offset = box[axis].start
                for a, b in zip(starts, stops, strict=True):
                    piece = list(box)
                    piece[axis] = slice(offset + int(a), offset + int(b))
                    pending.append(tuple(piece))
                break
            extent.append(
                slice(max(box[axis].start + int(hits[0]) - grow, 0), box[axis].start + int(hits[-1]) + 1 + grow)
            )
        else:
            tiles.append(tuple(slice(s.start, min(s.stop, n)) for s, n in zip(extent, foreground.shape, strict=True)))
    return tiles


def _contact_regions(lo: np.ndarray, hi: np.ndarray, radius: int, shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """Boxes that hold every pair of pixels of different cells within ``radius`` of each other (Chebyshev).

    Such a pair lies where the boxes of its two cells, grown by ``radius``, intersect. A window filter of
    half-width ``radius`` taken over such a region (edge replication at its rim) can miss a pixel outside the
    region, which the region of that pixel's own pair covers, but never invents one; so the union over the
    regions is exact. On dense frames the regions add up to more than the foreground's box, and that one box
    is returned instead.
    """
    limit = np.asarray(shape, dtype=np.int64) - 1
    whole_lo = np.maximum(lo.min(axis=0, keepdims=True) - radius, 0)
    whole_hi = np.minimum(hi.max(axis=0, keepdims=True) + radius, limit)
    if len(lo) <= _MAX_TILED_CELLS:
        i, j, _ = _box_pairs(lo, hi, radius + 1)  # gap <= radius along every axis
        pair_lo = np.maximum(np.maximum(lo[i], lo[j]) - radius, 0)
        pair_hi = np.minimum(np.minimum(hi[i], hi[j]) + radius, limit)
        local_cost = np.prod(pair_hi - pair_lo + 1, axis=1).sum() + _REGION_COST * i.size
        if local_cost < np.prod(whole_hi - whole_lo + 1):
            whole_lo, whole_hi = pair_lo, pair_hi
    return [_slices(a, b) for a, b in zip(whole_lo, whole_hi, strict=True)]


def tertiary_target(labels: np.ndarray, dilation_iterations: int | None = None, ring_width: int = 2) -> np.ndarray:
    """Background / boundary / cell map of Guo et al. (XB-Net, Algorithm 1).

    Per cell: background pixels within ``dilation_iterations`` binary dilations (cross structuring element)
    become boundary; cell pixels become cell, except the cell's outer ring (mask minus its erosion by a
    ``2 * ring_width + 1`` box) where another cell's label lies in a ``+-ring_width`` box window, which
    becomes boundary. With a box erosion the ring condition reduces to "another label within the window",
    so the whole map is one dilation (on tiles around the cells) and two rank filters (only where two cells
    come within ``ring_width``).

    Args:
        labels: instance labels ``(Y, X)`` or ``(Z, Y, X)``, integer dtype, 0 = background.
        dilation_iterations: boundary width outside cells; default 2 in 2D, 5 in 3D (as in the paper).
        ring_width: half-width of the window that detects touching cells (paper: 2).

    Returns:
        uint8 array of ``labels.shape`` with TERTIARY_BACKGROUND / TERTIARY_BOUNDARY / TERTIARY_CELL.

    Raises:
        UserInputError: non-integer, negative or wrongly shaped labels, or negative widths.
    """
    labels = _check_labels(labels)
    if dilation_iterations is None:
        dilation_iterations = 2 if labels.ndim == 2 else 5
    if dilation_iterations < 0 or ring_width < 0:
        raise UserInputError(
            f"tertiary_target: dilation_iterations={dilation_iterations} and ring_width={ring_width} must be >= 0"
        )
    target = np.zeros(labels.shape, dtype=np.uint8)
    foreground = labels > 0
    tiles = _foreground_tiles(foreground, max(dilation_iterations, ring_width))
    for box in tiles:
        view, inside = target[box], foreground[box]
        if dilation_iterations > 0:
            view[_dilate_cross(inside, dilation_iterations)] = TERTIARY_BOUNDARY
        view[inside] = TERTIARY_CELL
    if ring_width == 0 or not tiles:
        return target
    # Touching cells are few on sparse frames: look for other labels only where two cells come close. On
    # dense frames (cells cover much of their tiles) finding the cell boxes costs more than it saves.
    if np.count_nonzero(foreground) < _DENSE_SHARE * sum(math.prod(s.stop - s.start for s in b) for b in tiles):
        ids, lo, hi = _cell_boxes(labels)
        tiles = _contact_regions(lo, hi, ring_width, labels.shape) if len(ids) > 1 else []
    for region in tiles:
        target[region][_other_label_nearby(labels[region], ring_width)] = TERTIARY_BOUNDARY
    return target


def marker_erosion_for(dataset_name: str) -> int:
    """Marker erosion (square side in pixels) that U-SE-ResNet used for ``dataset_name`` (default 5)."""
    if dataset_name in _MARKER_EROSION:
        return _MARKER_EROSION[dataset_name]
    return _DEFAULT_MARKER_EROSION


def _present_ids(values: np.ndarray) -> np.ndarray:
    """Sorted distinct ids; bincount is several times faster than np.unique for the usual small ids."""
    if values.size == 0:
        return values.astype(np.int64)
    if int(values.max()) <= 1 << 22:
        return np.flatnonzero(np.bincount(values.astype(np.intp, copy=False)))
    return np.unique(values).astype(np.int64)


def _marker_footprint(ndim: int, erosion: int) -> tuple[int, ...]:
    if ndim == 2:
        return (erosion, erosion)
    return (min(erosion, _MARKER_Z_DEPTH), erosion, erosion)


def mask_marker_target(labels: np.ndarray, erosion: int) -> np.ndarray:
    """Cell mask and per-cell eroded markers (U-SE-ResNet targets).

    The marker is each cell eroded by an ``erosion x erosion`` square (in 3D an ``min(erosion, 3) x e x e``
    box: Z is coarsely sampled in CTC volumes). Pixels outside the image count as the cell itself, so
    cells cut by the image edge are not eroded there. With ``erosion >= 2`` markers of different cells are
    never adjacent, even diagonally. A cell too small to survive the erosion keeps its most interior
    pixels (maximum distance to anything that is not the cell; one blob of them), so every cell has a
    marker inside it. Non-convex cells can erode into several pieces, as in the original method.

    Args:
        labels: instance labels ``(Y, X)`` or ``(Z, Y, X)``, integer dtype, 0 = background.
        erosion: side of the erosion square in pixels, >= 1 (see :func:`marker_erosion_for`).

    Returns:
        uint8 array ``(2, *labels.shape)``: ``[0]`` mask (labels > 0), ``[1]`` marker, both 0/1.

    Raises:
        UserInputError: bad labels or ``erosion < 1``.
    """
    labels = _check_labels(labels)
    if isinstance(erosion, bool) or not isinstance(erosion, int | np.integer) or erosion < 1:
        raise UserInputError(f"mask_marker_target: erosion={erosion!r} must be an integer >= 1")
    erosion = int(erosion)
    out = np.zeros((2, *labels.shape), dtype=np.uint8)
    np.greater(labels, 0, out=out[0].view(bool))
    if erosion == 1:
        out[1] = out[0]
        return out
    marker = out[1].view(bool)
    size = _marker_footprint(labels.ndim, erosion)
    present, kept = [], []
    # A pixel survives the erosion iff the whole window holds its own label: min == max == label. Tiles keep
    # real background inside every window, so edge replication only acts at the image edge.
    for box in _foreground_tiles(out[0].view(bool), erosion):
        tile = labels[box]
        top = _box_reduce(tile, size, np.maximum)
        bottom = _box_reduce(tile, size, np.minimum)
        survived = (tile > 0) & (top == tile) & (bottom == tile)
        marker[box] = survived
        present.append(_present_ids(tile[tile > 0]))
        kept.append(_present_ids(tile[survived]))
    if not present:
        return out
    lost = np.setdiff1d(np.concatenate(present), np.concatenate(kept))
    # find_objects allocates one entry per id up to the largest: fine for CTC ids, not for arbitrary int32.
    small_ids = lost.size and lost.max() <= 1 << 22
    boxes = ndimage.find_objects(labels, max_label=int(lost.max())) if small_ids else None
    for label in lost:
        box = boxes[int(label) - 1] if boxes is not None else _crop_to_foreground(labels == label, 0)
        # Pad by one so the distance counts the box edge as "not the cell" like the true neighbours.
        cell = np.pad(labels[box] == label, 1)
        depth = ndimage.distance_transform_edt(cell)[(slice(1, -1),) * labels.ndim]
        # Ties can be spread over the cell (e.g. a thin bent cell): keep one blob so the cell gets one seed.
        inner, _ = ndimage.label(depth == depth.max(), structure=np.ones((3,) * labels.ndim))
        marker[box] |= inner == 1
    return out


def _touch_losses(labels: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Flat indices of the cell pixels that touch (full connectivity) a cell with a higher id."""
    losses = []
    for region in _contact_regions(lo, hi, 1, labels.shape):
        block = labels[region]
        top = _box_reduce(block, (3,) * labels.ndim, np.maximum)
        where = np.nonzero((block > 0) & (top != block))
        offset = [s.start for s in region]
        losses.append(np.ravel_multi_index(tuple(w + o for w, o in zip(where, offset, strict=True)), labels.shape))
    if not losses:
        return np.zeros(0, dtype=np.intp)
    return losses[0] if len(losses) == 1 else np.unique(np.concatenate(losses))


def _squared_distance_to(outside: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """Squared distance (int32) from every pixel to the nearest ``False`` pixel of ``outside``.

    Exact Euclidean feature transform; squaring the index offsets in int32 (boxes up to 46340 px a side) is
    cheaper than scipy's float64 distances, and squared distances order pixels the same way.
    """
    ft = scratch[: outside.ndim * outside.size].reshape((outside.ndim, *outside.shape))
    ndimage.distance_transform_edt(outside, return_distances=False, return_indices=True, indices=ft)
    for axis, n in enumerate(outside.shape):
        offset = ft[axis]
        offset -= np.arange(n, dtype=np.int32).reshape((n,) + (1,) * (outside.ndim - axis - 1))
        offset *= offset
        if axis:
            ft[0] += offset
    return ft[0]


def _add_border_term(
    labels: np.ndarray,
    foreground: np.ndarray,
    losses: np.ndarray,
    boxes: tuple[np.ndarray, np.ndarray, np.ndarray],
    weight: np.ndarray,
    w0: float,
    sigma: float,
) -> None:
    """Add ``w0 exp(-(d1 + d2)^2 / (2 sigma^2))`` to ``weight`` on background pixels where it reaches 0.01.

    The term reaches the tolerance only where ``d1 + d2 < reach = sigma sqrt(2 ln(w0 / 0.01))``. There the
    two nearest cells a, b are closer than ``reach`` to each other ("partners"), the pixel lies in both boxes
    grown by ``reach``, and so do the nearest pixels of a and b (each within ``reach`` of the other cell).
    So each cell with a partner gets one exact distance transform over the bounding box of its grown box
    intersected with its partners' grown boxes; cells without a partner get none. Distances found in these
    boxes are never below the true ones and are exact wherever the term counts.
    """
    reach = sigma * math.sqrt(2.0 * math.log(max(w0 / _WEIGHT_TOLERANCE, 1.0 + 1e-9)))
    ids, lo, hi = boxes
    if reach <= 2.0 or len(ids) < 2:  # a background pixel has d1 + d2 >= 2
        return
    i, j, gap = _box_pairs(lo, hi, reach)
    close = (gap.astype(np.float64) ** 2).sum(axis=1) < reach * reach
    i, j = i[close], j[close]
    if i.size == 0:
        return
    margin = int(math.ceil(reach))
    limit = np.asarray(labels.shape, dtype=np.int64) - 1
    grown_lo, grown_hi = np.maximum(lo - margin, 0), np.minimum(hi + margin, limit)
    # Per partner pair both cells need the intersection of the two grown boxes; per cell, the bounding box.
    cell, other = np.r_[i, j], np.r_[j, i]
    pair_lo, pair_hi = np.maximum(grown_lo[cell], grown_lo[other]), np.minimum(grown_hi[cell], grown_hi[other])
    box_lo, box_hi = _group_boxes(pair_lo, pair_hi, cell)
    active = np.unique(cell)
    largest = int(np.prod(box_hi[active] - box_lo[active] + 1, axis=1).max())
    scratch = np.empty((labels.ndim + 1) * largest, dtype=np.int32)
    loss_label = labels.ravel()[losses]
    order = np.argsort(loss_label, kind="stable")
    loss_label = loss_label[order]
    loss_at = (
        np.stack(np.unravel_index(losses[order], labels.shape)) if losses.size else np.zeros((labels.ndim, 0), np.intp)
    )
    limit_sq = math.floor(reach * reach)
    # The two nearest cells of a pixel where the term counts are partners: one pass per connected group.
    group = _groups(len(ids), i, j)
    active = active[np.argsort(group[active], kind="stable")]
    for members in np.split(active, np.flatnonzero(np.diff(group[active])) + 1):
        u_lo, u_hi = box_lo[members].min(axis=0), box_hi[members].max(axis=0)
        nearest, second = np.full((2, *(u_hi - u_lo + 1)), np.iinfo(np.int32).max, dtype=np.int32)
        for k in members:
            outside = labels[_slices(box_lo[k], box_hi[k])] != ids[k]
            first, stop = np.searchsorted(loss_label, ids[k]), np.searchsorted(loss_label, ids[k], side="right")
            if stop > first:  # pixels given up to a touching neighbour are background
                at = loss_at[:, first:stop] - box_lo[k][:, None]
                at = at[:, np.all((at >= 0) & (at < np.array(outside.shape)[:, None]), axis=0)]
                outside[tuple(at)] = True
            if outside.all():  # no pixel of the cell in the box: nothing here is near both cells
                continue
            distance = _squared_distance_to(outside, scratch[largest:])
            local = _slices(box_lo[k] - u_lo, box_hi[k] - u_lo)
            near, far = nearest[local], second[local]
            larger = np.maximum(near, distance, out=scratch[: distance.size].reshape(distance.shape))
            np.minimum(far, larger, out=far)
            np.minimum(near, distance, out=near)
        hit = np.flatnonzero((second <= limit_sq) & (nearest > 0))  # nearest = 0 inside active cells
        total = np.sqrt(nearest.ravel()[hit]) + np.sqrt(second.ravel()[hit])
        counts = total < reach
        where = tuple(c + a for c, a in zip(np.unravel_index(hit[counts], second.shape), u_lo, strict=True))
        background = ~foreground[where]
        term = w0 * np.exp(-(total[counts][background] ** 2) / (2.0 * sigma**2))
        weight[tuple(c[background] for c in where)] += term.astype(np.float32)


def unet_weight_map(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Binary foreground target and the pixel weight map of Ronneberger et al. (U-Net, 2015).

    ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on background pixels, ``w = w_c`` on cells; d1, d2
    are the distances to the nearest and second-nearest cell and ``w_c = N / (2 N_class)`` balances the
    two classes (mean weight 1). Touching cells are split as in the paper: a cell loses the pixels that
    touch a cell with a higher id, leaving a one-pixel background gap that carries the high border weight.

    The border term is added only where it reaches 0.01 (``d1 + d2 < sigma * sqrt(2 ln(w0 / 0.01))``,
    18.6 px for the defaults), with exact distances there; elsewhere it is below 0.01 and dropped. Only
    cells with another cell that close get a distance transform, over a box limited to where the two
    interact (see ``_add_border_term``).

    Args:
        labels: instance labels ``(Y, X)`` or ``(Z, Y, X)``, integer dtype, 0 = background.
        w0: border weight (paper: 10).
        sigma: border width in pixels (paper: about 5).

    Returns:
        ``(foreground, weight)``: uint8 0/1 and float32, both of ``labels.shape``.

    Raises:
        UserInputError: bad labels, ``w0 < 0`` or ``sigma <= 0``.
    """
    labels = _check_labels(labels)
    if not (w0 >= 0 and sigma > 0 and math.isfinite(w0) and math.isfinite(sigma)):
        raise UserInputError(f"unet_weight_map: w0={w0} must be >= 0 and sigma={sigma} must be > 0")
    foreground = labels > 0
    weight = np.empty(labels.shape, dtype=np.float32)
    if labels.size == 0:
        return foreground.view(np.uint8), weight
    boxes = _cell_boxes(labels)
    losses = _touch_losses(labels, boxes[1], boxes[2]) if len(boxes[0]) > 1 else np.zeros(0, dtype=np.intp)
    foreground.ravel()[losses] = False
    n_fg = int(np.count_nonzero(foreground))
    n_bg = labels.size - n_fg
    if n_fg and n_bg:
        weight.fill(labels.size / (2.0 * n_bg))
        np.copyto(weight, np.float32(labels.size / (2.0 * n_fg)), where=foreground)
    else:
        weight.fill(1.0)
    if w0 > 0 and n_fg:
        _add_border_term(labels, foreground, losses, boxes, weight, w0, sigma)
    return foreground.view(np.uint8), weight


def target_parameters(dataset_name: str, ndim: int) -> dict:
    """JSON-able description of the targets built for ``dataset_name`` (recorded in the store attrs)."""
    if ndim not in (2, 3):
        raise UserInputError(f"target_parameters: ndim={ndim} must be 2 or 3")
    erosion = marker_erosion_for(dataset_name)
    return {
        "tertiary": {
            "classes": {"background": TERTIARY_BACKGROUND, "boundary": TERTIARY_BOUNDARY, "cell": TERTIARY_CELL},
            "dilation_iterations": 2 if ndim == 2 else 5,
            "dilation_structure": "cross",
            "ring_width": 2,
        },
        "mask_marker": {
            "channels": ["mask", "marker"],
            "erosion": erosion,
            "footprint": list(_marker_footprint(ndim, erosion)),
            "small_cell_marker": "most interior pixels",
        },
        "unet_weight": {
            "w0": 10.0,
            "sigma": 5.0,
            "class_weight": "N / (2 N_class)",
            "touching_cells": "cell pixels touching a higher id set to background",
        },
    }
