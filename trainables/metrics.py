"""Cell Tracking Challenge SEG measure and foreground IoU, fast enough to run at every validation.

SEG (Ulman et al. 2017): a result object S matches a reference object R iff ``|R ∩ S| > 0.5 |R|`` (so at
most one S per R); SEG is the mean over all reference objects of Jaccard(R, S) for the matched S, 0 when R is
unmatched. Scores aggregate over frames by summing Jaccards and reference counts, so :func:`seg_counts`
returns both parts per frame and :func:`seg_score` combines them. Gives the same numbers as py-ctcmetrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from celltune.data_prep.errors import UserInputError

logger = logging.getLogger(__name__)

# Above this label id, counting areas with np.bincount would allocate too much; fall back to np.unique.
_BINCOUNT_MAX_LABEL = 1 << 22


def _check_pair(reference: np.ndarray, result: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, result = np.asarray(reference), np.asarray(result)
    if reference.shape != result.shape:
        raise UserInputError(f"reference shape {reference.shape} differs from result shape {result.shape}")
    for name, array in (("reference", reference), ("result", result)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise UserInputError(f"{name} label image has non-integer dtype {array.dtype}")
        if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
            raise UserInputError(f"{name} label image has negative label {array.min()}")
    return reference, result


def _areas(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, pixel counts) of the non-zero labels present."""
    flat = labels.ravel()
    if flat.size and int(flat.max()) <= _BINCOUNT_MAX_LABEL:
        counts = np.bincount(flat.astype(np.intp, copy=False))
        ids = np.flatnonzero(counts)
        ids = ids[ids > 0]
        return ids, counts[ids]
    ids, counts = np.unique(flat, return_counts=True)
    keep = ids > 0
    return ids[keep], counts[keep]


def seg_counts(reference: np.ndarray, result: np.ndarray) -> tuple[float, int]:
    """Sum of matched Jaccard indices and number of reference objects for one frame.

    The contingency table is one ``np.bincount`` over the pixels where both images are non-zero, so the cost
    does not grow with the number of objects (no per-object loop).

    Args:
        reference: reference instance labels ``(Y, X)`` or ``(Z, Y, X)``, 0 = background.
        result: result instance labels of the same shape.

    Returns:
        ``(sum_of_jaccards, n_reference_objects)``; feed a list of these to :func:`seg_score`.

    Raises:
        UserInputError: shapes differ, or a non-integer / negative label image.
    """
    reference, result = _check_pair(reference, result)
    ref_ids, ref_area = _areas(reference)
    if ref_ids.size == 0:
        return 0.0, 0
    res_ids, res_area = _areas(result)
    both = (reference > 0) & (result > 0)
    if res_ids.size == 0 or not both.any():
        return 0.0, int(ref_ids.size)
    # Pair key over compact indices (rank of the id among the ids present), counted with bincount when the
    # table is small and with a sort otherwise.
    ref_index = np.searchsorted(ref_ids, reference[both]).astype(np.int64)
    res_index = np.searchsorted(res_ids, result[both]).astype(np.int64)
    keys = ref_index * res_ids.size + res_index
    if ref_ids.size * res_ids.size <= _BINCOUNT_MAX_LABEL:
        table = np.bincount(keys, minlength=ref_ids.size * res_ids.size)
        pair_keys = np.flatnonzero(table)
        overlap = table[pair_keys]
    else:
        pair_keys, overlap = np.unique(keys, return_counts=True)
    pair_ref, pair_res = np.divmod(pair_keys, res_ids.size)
    area_r = ref_area[pair_ref]
    area_s = res_area[pair_res]
    matched = 2 * overlap > area_r  # strictly more than half of R, in exact integers
    jaccard = overlap[matched] / (area_r[matched] + area_s[matched] - overlap[matched])
    return float(jaccard.sum()), int(ref_ids.size)


def seg_score(pairs: Iterable[tuple[float, int]]) -> float:
    """SEG over many frames from their :func:`seg_counts`; 0.0 when there is no reference object at all.

    The empty case scores 0 like py-ctcmetrics (it divides by ``max(n, 1)``), so a search never sees NaN.
    """
    total, count = 0.0, 0
    for jaccard_sum, n_reference in pairs:
        total += float(jaccard_sum)
        count += int(n_reference)
    return total / count if count else 0.0


def pixel_iou(reference: np.ndarray, result: np.ndarray) -> float:
    """Foreground IoU ``|fg(R) ∩ fg(S)| / |fg(R) ∪ fg(S)|`` ignoring instance ids; 1.0 when both are empty."""
    reference, result = _check_pair(reference, result)
    ref_fg, res_fg = reference > 0, result > 0
    union = int(np.count_nonzero(ref_fg | res_fg))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(ref_fg & res_fg)) / union
