"""Instance-segmentation measures, fast enough to run at every validation.

- CTC SEG (Ulman et al. 2017): a result object S matches a reference object R iff ``|R ∩ S| > 0.5 |R|`` (so
  at most one S per R); SEG is the mean over all reference objects of Jaccard(R, S) for the matched S, 0 when
  R is unmatched. Scores aggregate over frames by summing Jaccards and reference counts, so
  :func:`seg_counts` returns both parts per frame and :func:`seg_score` combines them. Gives the same numbers
  as py-ctcmetrics.
- Instance precision / recall / F1 at an IoU threshold t (as in StarDist and Cellpose): reference and
  predicted objects are paired one-to-one, a pair counting as a true positive when ``IoU >= t``; the pairing
  maximises the number of true positives (ties broken by the larger IoU sum). Above t = 0.5 a reference can
  have at most one candidate, so the pairing is unique; below it an optimal assignment decides.
  :class:`InstanceScores` pools TP/FP/FN over frames, so a dataset's precision is TP/(TP+FP) over all its
  frames rather than a mean of per-frame ratios.
- Adapted Rand error (SNEMI3D, Arganda-Carreras et al. 2015) through ``skimage.metrics.adapted_rand_error``.
- Foreground (pixel) IoU ignoring instance ids.

All measures are computed from one sparse contingency table of the label pair per frame.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from celltune.data_prep.common import UserInputError

logger = logging.getLogger(__name__)

# Above this label id, counting areas with np.bincount would allocate too much; fall back to np.unique.
_BINCOUNT_MAX_LABEL = 1 << 22

# The IoU thresholds reported next to the CTC measures, and the grid a precision/recall curve is drawn on.
REPORT_THRESHOLDS: tuple[float, ...] = (0.25, 0.5, 0.75)
CURVE_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(2, 20))  # 0.1, 0.15, ..., 0.95


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


@dataclass(frozen=True)
class _Overlaps:
    """Sparse contingency table of the non-zero labels of a (reference, result) pair."""

    ref_ids: np.ndarray  # (R,) ids present, sorted
    ref_area: np.ndarray  # (R,)
    res_ids: np.ndarray  # (P,)
    res_area: np.ndarray  # (P,)
    pair_ref: np.ndarray  # (K,) row index into ref_ids of each overlapping pair
    pair_res: np.ndarray  # (K,) index into res_ids
    overlap: np.ndarray  # (K,) pixels in both


def _overlaps(reference: np.ndarray, result: np.ndarray) -> _Overlaps:
    """The contingency table as one ``np.bincount`` over the pixels where both images are non-zero, so the cost
    does not grow with the number of objects (no per-object loop)."""
    reference, result = _check_pair(reference, result)
    ref_ids, ref_area = _areas(reference)
    res_ids, res_area = _areas(result)
    empty = np.zeros(0, dtype=np.int64)
    both = (reference > 0) & (result > 0)
    if ref_ids.size == 0 or res_ids.size == 0 or not both.any():
        return _Overlaps(ref_ids, ref_area, res_ids, res_area, empty, empty, empty)
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
    return _Overlaps(ref_ids, ref_area, res_ids, res_area, pair_ref, pair_res, overlap.astype(np.int64))


def seg_counts(reference: np.ndarray, result: np.ndarray) -> tuple[float, int]:
    """Sum of matched Jaccard indices and number of reference objects for one frame.

    Args:
        reference: reference instance labels ``(Y, X)`` or ``(Z, Y, X)``, 0 = background.
        result: result instance labels of the same shape.

    Returns:
        ``(sum_of_jaccards, n_reference_objects)``; feed a list of these to :func:`seg_score`.

    Raises:
        UserInputError: shapes differ, or a non-integer / negative label image.
    """
    table = _overlaps(reference, result)
    area_r = table.ref_area[table.pair_ref]
    area_s = table.res_area[table.pair_res]
    overlap = table.overlap
    matched = 2 * overlap > area_r  # strictly more than half of R, in exact integers
    jaccard = overlap[matched] / (area_r[matched] + area_s[matched] - overlap[matched])
    return float(jaccard.sum()), int(table.ref_ids.size)


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


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 < threshold <= 1.0:
        raise UserInputError(f"IoU threshold {threshold}: must be in (0, 1]")
    return threshold


@dataclass(frozen=True)
class MatchCounts:
    """True positives, false positives (unmatched predictions) and false negatives (unmatched references)."""

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        """TP / (TP + FP); 0.0 without predictions unless there is nothing to find either (then 1.0)."""
        return _ratio(self.tp, self.tp + self.fp, empty=1.0 if self.fn == 0 else 0.0)

    @property
    def recall(self) -> float:
        """TP / (TP + FN); 0.0 without references unless nothing was predicted either (then 1.0)."""
        return _ratio(self.tp, self.tp + self.fn, empty=1.0 if self.fp == 0 else 0.0)

    @property
    def f1(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 when both images are empty."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, empty=1.0)

    def __add__(self, other: MatchCounts) -> MatchCounts:
        return MatchCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)


def _ratio(numerator: int, denominator: int, *, empty: float) -> float:
    return numerator / denominator if denominator else empty


@dataclass(frozen=True)
class InstanceMatching:
    """The IoU of every overlapping (reference, predicted) object pair of one frame; see :func:`instance_matches`.

    Pairs that do not overlap have IoU 0 and are not stored.
    """

    reference_ids: np.ndarray  # (R,) labels present in the reference, sorted
    predicted_ids: np.ndarray  # (P,) labels present in the prediction, sorted
    pair_reference: np.ndarray  # (K,) index into reference_ids
    pair_predicted: np.ndarray  # (K,) index into predicted_ids
    pair_iou: np.ndarray  # (K,) IoU of the pair, > 0

    @property
    def iou(self) -> np.ndarray:
        """The dense IoU matrix ``(R, P)``, rows in ``reference_ids`` order, columns in ``predicted_ids`` order."""
        matrix = np.zeros((self.reference_ids.size, self.predicted_ids.size))
        matrix[self.pair_reference, self.pair_predicted] = self.pair_iou
        return matrix

    def matches(self, threshold: float = 0.5) -> list[tuple[int, int, float]]:
        """The one-to-one matched pairs at ``IoU >= threshold`` as ``(reference id, predicted id, IoU)``.

        The pairing maximises the number of matches, then the IoU sum (as StarDist and Cellpose do); pairs
        whose objects have no other candidate are taken as they are, the rest go to
        ``scipy.optimize.linear_sum_assignment``.

        Raises:
            UserInputError: ``threshold`` outside ``(0, 1]``.
        """
        rows, cols, ious = self._matched(_check_threshold(threshold))
        return [(int(self.reference_ids[r]), int(self.predicted_ids[c]), float(v))
                for r, c, v in zip(rows, cols, ious, strict=True)]

    def counts(self, threshold: float = 0.5) -> MatchCounts:
        """TP, FP and FN at ``IoU >= threshold`` (see :meth:`matches`)."""
        tp = int(self._matched(_check_threshold(threshold))[0].size)
        return MatchCounts(tp=tp, fp=int(self.predicted_ids.size) - tp, fn=int(self.reference_ids.size) - tp)

    def _matched(self, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keep = self.pair_iou >= threshold
        rows, cols, ious = self.pair_reference[keep], self.pair_predicted[keep], self.pair_iou[keep]
        if rows.size == 0:
            return rows, cols, ious
        row_degree = np.bincount(rows, minlength=self.reference_ids.size)
        col_degree = np.bincount(cols, minlength=self.predicted_ids.size)
        alone = (row_degree[rows] == 1) & (col_degree[cols] == 1)  # an isolated edge is its own best matching
        if alone.all():
            return rows, cols, ious
        from scipy.optimize import linear_sum_assignment

        contested = ~alone
        sub_rows, row_index = np.unique(rows[contested], return_inverse=True)
        sub_cols, col_index = np.unique(cols[contested], return_inverse=True)
        # Every candidate is worth 1 plus a tie-break below 1/2 in total, so more matches always win.
        weight = np.zeros((sub_rows.size, sub_cols.size))
        weight[row_index, col_index] = 1.0 + ious[contested] / (2 * min(sub_rows.size, sub_cols.size))
        picked_rows, picked_cols = linear_sum_assignment(weight, maximize=True)
        ok = weight[picked_rows, picked_cols] > 0
        lookup = np.zeros((sub_rows.size, sub_cols.size))
        lookup[row_index, col_index] = ious[contested]
        picked_rows, picked_cols = picked_rows[ok], picked_cols[ok]
        out_rows = np.concatenate([rows[alone], sub_rows[picked_rows]])
        out_cols = np.concatenate([cols[alone], sub_cols[picked_cols]])
        out_ious = np.concatenate([ious[alone], lookup[picked_rows, picked_cols]])
        order = np.argsort(out_rows, kind="stable")
        return out_rows[order], out_cols[order], out_ious[order]


def _matching(table: _Overlaps) -> InstanceMatching:
    area_r = table.ref_area[table.pair_ref]
    area_s = table.res_area[table.pair_res]
    iou = table.overlap / (area_r + area_s - table.overlap)
    return InstanceMatching(table.ref_ids, table.res_ids, table.pair_ref, table.pair_res, iou.astype(np.float64))


def instance_matches(reference: np.ndarray, predicted: np.ndarray) -> InstanceMatching:
    """IoU of every overlapping object pair of one frame, for one-to-one matching at IoU thresholds.

    Args:
        reference: reference instance labels ``(Y, X)`` or ``(Z, Y, X)``, 0 = background.
        predicted: predicted instance labels of the same shape.

    Returns:
        An :class:`InstanceMatching`: ``.iou`` is the ``(R, P)`` matrix, ``.matches(t)`` the matched pairs and
        ``.counts(t)`` the TP/FP/FN at threshold ``t``.

    Raises:
        UserInputError: shapes differ, or a non-integer / negative label image.
    """
    return _matching(_overlaps(reference, predicted))


def precision_recall_at(
    reference: np.ndarray, predicted: np.ndarray, thresholds: Sequence[float] = REPORT_THRESHOLDS
) -> dict[float, tuple[float, float, float]]:
    """Instance ``(precision, recall, f1)`` of one frame at each IoU threshold (see :class:`MatchCounts` for the
    empty cases). To pool frames, use :class:`InstanceScores`.

    Raises:
        UserInputError: bad label images, or a threshold outside ``(0, 1]``.
    """
    matching = instance_matches(reference, predicted)
    out = {}
    for threshold in thresholds:
        counts = matching.counts(threshold)
        out[float(threshold)] = (counts.precision, counts.recall, counts.f1)
    return out


@dataclass(frozen=True)
class AdaptedRand:
    """Adapted Rand error and the pair precision and recall it combines (``error = 1 - F1`` of the two)."""

    error: float
    precision: float  # of the pixel pairs sharing a predicted label, the fraction also sharing a reference label
    recall: float  # of the pixel pairs sharing a reference label, the fraction also sharing a predicted label


def _adapted_rand(table: _Overlaps) -> AdaptedRand | None:
    if table.ref_ids.size == 0:
        return None
    from scipy import sparse
    from skimage.metrics import adapted_rand_error

    # skimage's own table: rows = reference labels (reference background ignored), columns = predicted labels
    # with predicted background (column 0) an ordinary segment, which is how skimage scores label images.
    on_background = table.ref_area - np.bincount(table.pair_ref, weights=table.overlap, minlength=table.ref_ids.size)
    rows = np.concatenate([table.pair_ref, np.arange(table.ref_ids.size)])
    cols = np.concatenate([table.pair_res + 1, np.zeros(table.ref_ids.size, dtype=np.int64)])
    data = np.concatenate([table.overlap, on_background]).astype(np.float64)
    keep = data > 0
    contingency = sparse.csr_array((data[keep], (rows[keep], cols[keep])),
                                   shape=(table.ref_ids.size, table.res_ids.size + 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        error, by_reference, by_prediction = adapted_rand_error(table=contingency)
    # skimage returns (error, pairs-in-both / reference pairs, pairs-in-both / predicted pairs): the last two
    # are recall and precision, swapped against its docstring (scikit-image issue #6485).
    # 0/0 happens only when no two pixels share a label on a side: nothing wrongly joined (or split) there.
    precision = 1.0 if math.isnan(by_prediction) else float(by_prediction)
    recall = 1.0 if math.isnan(by_reference) else float(by_reference)
    return AdaptedRand(error=0.0 if math.isnan(error) else float(error), precision=precision, recall=recall)


def adapted_rand(reference: np.ndarray, predicted: np.ndarray) -> AdaptedRand | None:
    """Adapted Rand error of one frame (``skimage.metrics.adapted_rand_error`` conventions).

    Pixels that are background in the reference are ignored; predicted background is one segment like any
    other, so a predicted background covering two reference cells counts as merging them. None when the
    reference has no foreground (nothing to score).

    Args:
        reference: reference instance labels ``(Y, X)`` or ``(Z, Y, X)``, 0 = background.
        predicted: predicted instance labels of the same shape.

    Raises:
        UserInputError: shapes differ, or a non-integer / negative label image.
    """
    return _adapted_rand(_overlaps(reference, predicted))


class InstanceScores:
    """Instance measures pooled over frames: TP/FP/FN per IoU threshold summed over all frames, mean pixel IoU
    over frames and mean adapted Rand error over frames whose reference has foreground.

    Add frames with :meth:`add` and pool another accumulator (another sequence of the dataset) with
    :meth:`update`.

    Args:
        thresholds: IoU thresholds to count matches at (default: a 0.1 ... 0.95 grid holding 0.25, 0.5, 0.75).

    Raises:
        UserInputError: a threshold outside ``(0, 1]``, or no threshold.
    """

    def __init__(self, thresholds: Sequence[float] = CURVE_THRESHOLDS) -> None:
        self.thresholds: tuple[float, ...] = tuple(sorted({_check_threshold(t) for t in thresholds}))
        if not self.thresholds:
            raise UserInputError("InstanceScores: no IoU threshold given")
        self._counts = {t: MatchCounts(0, 0, 0) for t in self.thresholds}
        self.frames = 0
        self._iou_sum = 0.0
        self._are_sum = 0.0
        self._are_frames = 0

    def add(self, reference: np.ndarray, predicted: np.ndarray) -> None:
        """Score one frame (``(Y, X)`` or ``(Z, Y, X)`` label images of one shape) and pool its counts."""
        table = _overlaps(reference, predicted)
        matching = _matching(table)
        for t in self.thresholds:
            self._counts[t] = self._counts[t] + matching.counts(t)
        self._iou_sum += pixel_iou(reference, predicted)
        rand = _adapted_rand(table)
        if rand is not None:
            self._are_sum += rand.error
            self._are_frames += 1
        self.frames += 1

    def update(self, other: InstanceScores) -> None:
        """Pool another accumulator's frames into this one (same thresholds)."""
        if other.thresholds != self.thresholds:
            raise UserInputError(f"cannot pool instance scores over thresholds {other.thresholds} into "
                                 f"{self.thresholds}")
        for t in self.thresholds:
            self._counts[t] = self._counts[t] + other._counts[t]
        self.frames += other.frames
        self._iou_sum += other._iou_sum
        self._are_sum += other._are_sum
        self._are_frames += other._are_frames

    def counts(self, threshold: float) -> MatchCounts:
        """Pooled TP/FP/FN at one of :attr:`thresholds`."""
        key = float(threshold)
        if key not in self._counts:
            raise UserInputError(f"IoU threshold {threshold}: not counted (thresholds {list(self.thresholds)})")
        return self._counts[key]

    @property
    def pixel_iou(self) -> float | None:
        """Mean foreground IoU over the frames; None before any frame."""
        return self._iou_sum / self.frames if self.frames else None

    @property
    def adapted_rand_error(self) -> float | None:
        """Mean adapted Rand error over frames whose reference has foreground; None when there is none."""
        return self._are_sum / self._are_frames if self._are_frames else None

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(thresholds, precision, recall)`` arrays over all counted thresholds, for a curve."""
        precision = [self._counts[t].precision for t in self.thresholds]
        recall = [self._counts[t].recall for t in self.thresholds]
        return np.array(self.thresholds), np.array(precision), np.array(recall)

    def summary(self, thresholds: Sequence[float] = REPORT_THRESHOLDS) -> dict[str, float | int | None]:
        """Flat numbers for tables and JSON: ``frames``, ``precision@t``, ``recall@t``, ``f1@t`` for each
        threshold, ``pixel_iou`` and ``are`` (None when not defined); counts only when frames were added."""
        out: dict[str, float | int | None] = {"frames": self.frames}
        for t in thresholds:
            counts = self.counts(t) if self.frames else None
            for name in ("precision", "recall", "f1"):
                out[f"{name}@{t:g}"] = None if counts is None else getattr(counts, name)
        out["pixel_iou"] = self.pixel_iou
        out["are"] = self.adapted_rand_error
        return out
