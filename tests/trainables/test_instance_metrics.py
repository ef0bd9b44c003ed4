"""Instance precision/recall at IoU thresholds, adapted Rand error and their pooling over frames, on tiny
label images whose counts and pair sums are worked out by hand in the comments.

Adapted Rand by hand (skimage conventions, reference background ignored): with n_ij the pixels of reference
object i under predicted label j (0 included), a_i and b_j the row and column sums, and pairs(x) = x (x - 1),
J = sum pairs(n_ij), R = sum pairs(a_i), S = sum pairs(b_j): precision = J / S, recall = J / R and
error = 1 - 2 J / (R + S).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from celltune.data_prep.common import UserInputError
from celltune.trainables.metrics import (
    InstanceScores,
    MatchCounts,
    adapted_rand,
    instance_matches,
    precision_recall_at,
)


def _split() -> tuple[np.ndarray, np.ndarray]:
    """One 8-px reference cell, predicted as two 4-px halves (IoU 0.5 each)."""
    reference = np.ones((2, 4), dtype=np.uint16)
    predicted = np.zeros((2, 4), dtype=np.int32)
    predicted[:, :2], predicted[:, 2:] = 1, 2
    return reference, predicted


def _merge() -> tuple[np.ndarray, np.ndarray]:
    """Two 4-px reference cells, predicted as one 8-px object (IoU 0.5 each)."""
    reference, predicted = _split()
    return predicted.astype(np.uint16), reference.astype(np.int32) * 5


def _partial() -> tuple[np.ndarray, np.ndarray]:
    """A 16-px cell covered by a 6-px prediction (IoU 0.375) and a 9-px cell predicted exactly (IoU 1)."""
    reference = np.zeros((8, 8), dtype=np.uint16)
    reference[0:4, 0:4] = 1
    reference[5:8, 5:8] = 2
    predicted = np.zeros((8, 8), dtype=np.int32)
    predicted[0:2, 0:3] = 7
    predicted[5:8, 5:8] = 3
    return reference, predicted


def _crossing() -> tuple[np.ndarray, np.ndarray]:
    """A (cols 0-9) and B (10-19); Y = cols 0-2, X = cols 3-14. IoU(Y, A) = 3/10, IoU(X, A) = 7/15,
    IoU(X, B) = 5/17: matching X to its best partner A leaves Y and B alone, the optimum is Y-A and X-B."""
    reference = np.zeros((1, 20), dtype=np.uint16)
    reference[0, 0:10], reference[0, 10:20] = 1, 2
    predicted = np.zeros((1, 20), dtype=np.int32)
    predicted[0, 0:3], predicted[0, 3:15] = 9, 4
    return reference, predicted


def test_split_cell_counts_one_match_and_one_false_positive():
    reference, predicted = _split()
    scores = precision_recall_at(reference, predicted)
    # IoU exactly 0.5 still matches at 0.5 (IoU >= t); only one half can be the match.
    assert scores[0.25] == scores[0.5] == (0.5, 1.0, pytest.approx(2 / 3))  # TP 1, FP 1, FN 0
    assert scores[0.75] == (0.0, 0.0, 0.0)  # TP 0, FP 2, FN 1
    # R = pairs(8) = 56, S = 2 pairs(4) = 24, J = 24: a split joins nothing wrongly (precision 1).
    rand = adapted_rand(reference, predicted)
    assert (rand.error, rand.precision, rand.recall) == (pytest.approx(1 - 48 / 80), 1.0, pytest.approx(24 / 56))


def test_merged_cells_count_one_match_and_one_miss():
    reference, predicted = _merge()
    scores = precision_recall_at(reference, predicted)
    assert scores[0.5] == (1.0, 0.5, pytest.approx(2 / 3))  # TP 1, FP 0, FN 1
    assert scores[0.75] == (0.0, 0.0, 0.0)  # TP 0, FP 1, FN 2
    # R = 2 pairs(4) = 24, S = pairs(8) = 56, J = 24: the mirror image of the split.
    rand = adapted_rand(reference, predicted)
    assert (rand.error, rand.precision, rand.recall) == (pytest.approx(0.4), pytest.approx(24 / 56), 1.0)


def test_threshold_025_matches_what_05_does_not():
    reference, predicted = _partial()
    matching = instance_matches(reference, predicted)
    assert matching.reference_ids.tolist() == [1, 2] and matching.predicted_ids.tolist() == [3, 7]
    np.testing.assert_allclose(matching.iou, [[0.0, 6 / 16], [1.0, 0.0]])
    assert matching.matches(0.25) == [(1, 7, pytest.approx(0.375)), (2, 3, 1.0)]
    assert matching.matches(0.5) == [(2, 3, 1.0)]
    assert matching.counts(0.25) == MatchCounts(tp=2, fp=0, fn=0)
    assert matching.counts(0.5) == matching.counts(0.75) == MatchCounts(tp=1, fp=1, fn=1)
    scores = precision_recall_at(reference, predicted, thresholds=(0.25, 0.5))
    assert scores == {0.25: (1.0, 1.0, 1.0), 0.5: (0.5, 0.5, 0.5)}
    # Cell 1: 6 px under label 7, 10 px under background; cell 2: 9 px under label 3.
    # R = pairs(16) + pairs(9) = 240 + 72 = 312; S = pairs(6) + pairs(10) + pairs(9) = 30 + 90 + 72 = 192 = J.
    rand = adapted_rand(reference, predicted)
    assert (rand.error, rand.precision, rand.recall) == (pytest.approx(1 - 384 / 504), 1.0, pytest.approx(192 / 312))


def test_low_threshold_uses_an_optimal_assignment_not_the_best_partner():
    reference, predicted = _crossing()
    matching = instance_matches(reference, predicted)
    np.testing.assert_allclose(matching.iou, [[7 / 15, 3 / 10], [5 / 17, 0.0]])  # columns: labels 4, 9
    assert matching.matches(0.25) == [(1, 9, pytest.approx(0.3)), (2, 4, pytest.approx(5 / 17))]
    assert matching.counts(0.25) == MatchCounts(tp=2, fp=0, fn=0)
    assert matching.counts(0.4) == MatchCounts(tp=1, fp=1, fn=1)  # only X-A is left
    assert matching.counts(0.5) == MatchCounts(tp=0, fp=2, fn=2)
    # n(A,Y) = 3, n(A,X) = 7, n(B,X) = 5, n(B,bg) = 5. R = 2 pairs(10) = 180; S = pairs(3) + pairs(12) + pairs(5)
    # = 6 + 132 + 20 = 158; J = 6 + 42 + 20 + 20 = 88.
    rand = adapted_rand(reference, predicted)
    assert rand.error == pytest.approx(1 - 176 / 338)
    assert (rand.precision, rand.recall) == (pytest.approx(88 / 158), pytest.approx(88 / 180))


def test_more_matches_beat_a_larger_iou_sum():
    # A = cols 0-9, B = 10-19; Y = cols 0-1, X = cols 2-13. IoU(X, A) = 8/14 = 0.571 alone outweighs
    # IoU(Y, A) + IoU(X, B) = 2/10 + 4/18 = 0.422, but at t = 0.1 the two matches are worth more.
    reference = np.zeros((1, 20), dtype=np.uint16)
    reference[0, 0:10], reference[0, 10:20] = 1, 2
    predicted = np.zeros((1, 20), dtype=np.int32)
    predicted[0, 0:2], predicted[0, 2:14] = 1, 2
    matching = instance_matches(reference, predicted)
    assert matching.matches(0.1) == [(1, 1, pytest.approx(0.2)), (2, 2, pytest.approx(4 / 18))]
    assert matching.matches(0.25) == [(1, 2, pytest.approx(8 / 14))]


def test_empty_prediction_reference_and_both():
    reference, _ = _merge()
    nothing = np.zeros_like(reference)
    # No prediction: precision 0 (nothing to show for two cells), recall 0.
    assert precision_recall_at(reference, nothing)[0.5] == (0.0, 0.0, 0.0)
    # Predicted background is one segment (skimage): both cells fall in it, which scores like the merge.
    rand = adapted_rand(reference, nothing)
    assert (rand.error, rand.precision, rand.recall) == (pytest.approx(0.4), pytest.approx(24 / 56), 1.0)
    # No reference: one false positive, recall 0 too; the Rand error has no pixel to score.
    assert precision_recall_at(nothing, reference)[0.5] == (0.0, 0.0, 0.0)
    assert adapted_rand(nothing, reference) is None
    # Both empty: nothing to find and nothing found.
    assert precision_recall_at(nothing, nothing)[0.25] == (1.0, 1.0, 1.0)
    assert adapted_rand(nothing, nothing) is None
    assert instance_matches(nothing, nothing).iou.shape == (0, 0)


def test_single_pixel_objects_have_no_pairs():
    reference = np.array([[1, 0, 2]], dtype=np.uint8)
    rand = adapted_rand(reference, reference)
    assert (rand.error, rand.precision, rand.recall) == (0.0, 1.0, 1.0)  # no pixel pairs anywhere: nothing wrong
    assert precision_recall_at(reference, reference)[0.75] == (1.0, 1.0, 1.0)


def test_frames_pool_counts_not_ratios():
    scores = InstanceScores(thresholds=(0.25, 0.5))
    scores.add(*_partial())  # t=0.5: TP 1, FP 1, FN 1; pixel IoU 15/25; ARE 1 - 384/504
    reference, _ = _merge()
    scores.add(reference, np.zeros_like(reference))  # TP 0, FP 0, FN 2; pixel IoU 0; ARE 0.4
    nothing = np.zeros((3, 3), dtype=np.uint8)
    scores.add(nothing, nothing)  # nothing to count; pixel IoU 1; no ARE
    assert scores.frames == 3
    assert scores.counts(0.5) == MatchCounts(tp=1, fp=1, fn=3)
    assert scores.counts(0.25) == MatchCounts(tp=2, fp=0, fn=2)
    summary = scores.summary(thresholds=(0.5,))
    # Pooled precision 1/2, not the mean of per-frame precisions (0.5 + 0 + 1) / 3.
    assert summary["precision@0.5"] == 0.5 and summary["recall@0.5"] == 0.25
    assert summary["f1@0.5"] == pytest.approx(2 / 6)
    assert summary["pixel_iou"] == pytest.approx((15 / 25 + 0 + 1) / 3)
    assert summary["are"] == pytest.approx(((1 - 384 / 504) + 0.4) / 2)
    thresholds, precision, recall = scores.curve()
    assert thresholds.tolist() == [0.25, 0.5] and precision.tolist() == [1.0, 0.5] and recall.tolist() == [0.5, 0.25]


def test_update_pools_like_one_accumulator():
    frames = [_split(), _merge(), _partial(), _crossing()]
    whole = InstanceScores()
    for frame in frames:
        whole.add(*frame)
    first, second = InstanceScores(), InstanceScores()
    for frame in frames[:2]:
        first.add(*frame)
    for frame in frames[2:]:
        second.add(*frame)
    first.update(second)
    assert first.summary() == whole.summary()
    assert all(first.counts(t) == whole.counts(t) for t in whole.thresholds)
    with pytest.raises(UserInputError, match="cannot pool"):
        first.update(InstanceScores(thresholds=(0.5,)))


def test_empty_accumulator_reports_nothing_rather_than_a_number():
    summary = InstanceScores().summary()
    assert summary["frames"] == 0 and summary["precision@0.5"] is None
    assert summary["pixel_iou"] is None and summary["are"] is None


def _max_matching(iou: np.ndarray, threshold: float) -> int:
    """Largest one-to-one matching by brute force over the assignments of references to predictions."""
    n_ref, n_pred = iou.shape
    best = 0
    for chosen in itertools.permutations(range(max(n_pred, n_ref)), n_ref):
        best = max(best, sum(1 for r, p in enumerate(chosen) if p < n_pred and iou[r, p] >= threshold))
    return best


def test_matching_is_maximal_on_random_overlapping_blobs():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(40):
        reference = ndimage.label(ndimage.gaussian_filter(rng.random((24, 24)), 1.5) > 0.52)[0]
        predicted = ndimage.label(ndimage.gaussian_filter(rng.random((24, 24)), 1.5) > 0.52)[0]
        matching = instance_matches(reference, predicted)
        if not (0 < matching.reference_ids.size <= 6 and 0 < matching.predicted_ids.size <= 6):
            continue
        checked += 1
        for threshold in (0.1, 0.25, 0.5):
            pairs = matching.matches(threshold)
            assert len(pairs) == _max_matching(matching.iou, threshold)
            assert len({r for r, _, _ in pairs}) == len({p for _, p, _ in pairs}) == len(pairs)
            assert all(iou >= threshold for _, _, iou in pairs)
    assert checked >= 10


def test_adapted_rand_agrees_with_skimage_on_random_labels():
    from skimage.metrics import adapted_rand_error

    rng = np.random.default_rng(1)
    for _ in range(5):
        reference = ndimage.label(ndimage.gaussian_filter(rng.random((48, 40)), 2) > 0.5)[0]
        predicted = ndimage.label(ndimage.gaussian_filter(rng.random((48, 40)), 2) > 0.5)[0] * 3
        ours = adapted_rand(reference, predicted)
        error, by_reference, by_prediction = adapted_rand_error(reference, predicted)
        # skimage's second and third values are recall and precision (scikit-image issue #6485).
        assert (ours.error, ours.precision, ours.recall) == (
            pytest.approx(error), pytest.approx(by_prediction), pytest.approx(by_reference))


def test_volumes_and_bad_input():
    reference = np.zeros((2, 4, 4), dtype=np.uint16)
    reference[:, :2, :2] = 1  # 8 voxels
    predicted = np.zeros_like(reference)
    predicted[0, :2, :2] = 1  # 4 of them: IoU 0.5
    assert instance_matches(reference, predicted).counts(0.5) == MatchCounts(tp=1, fp=0, fn=0)
    with pytest.raises(UserInputError, match="IoU threshold 0.0"):
        precision_recall_at(reference, predicted, thresholds=(0.0,))
    with pytest.raises(UserInputError, match="IoU threshold 1.5"):
        instance_matches(reference, predicted).matches(1.5)
    with pytest.raises(UserInputError, match="not counted"):
        InstanceScores(thresholds=(0.5,)).counts(0.25)
    with pytest.raises(UserInputError, match="shape"):
        adapted_rand(reference, predicted[0])
    with pytest.raises(UserInputError, match="float"):
        InstanceScores().add(reference, predicted.astype(np.float32))


def test_training_validation_reports_instance_scores_per_dataset():
    import torch

    from celltune.trainables.data import ValidationFrame
    from celltune.trainables.train_loop import evaluate

    class Threshold(torch.nn.Module):
        """Background / foreground logits straight from the intensity: pixels at 1 are cell."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([10 * (0.5 - x), 10 * (x - 0.5)], dim=1)

    labels = np.zeros((32, 32), dtype=np.uint16)
    labels[2:10, 2:10], labels[2:10, 20:28], labels[20:28, 2:10], labels[20:28, 20:28] = 1, 2, 3, 4  # 64 px each
    image = np.isin(labels, (1, 2)).astype(np.float32)  # cells 3 and 4 are missed
    empty = np.zeros((32, 32), dtype=np.uint16)
    validation = {"A": [ValidationFrame(raw=image, image=image, labels=labels)],
                  "E": [ValidationFrame(raw=empty, image=empty.astype(np.float32), labels=empty)]}
    scores, _ = evaluate(Threshold(), validation, kind="binary", size_multiple=1, postprocess_params={},
                         device=torch.device("cpu"))
    assert scores["seg/A"] == 0.5 and scores["iou/A"] == 0.5
    assert scores["precision@0.5/A"] == 1.0 and scores["recall@0.5/A"] == 0.5
    # R = 4 pairs(64) = 16128; the missed cells share the predicted background: S = 2 pairs(64) + pairs(128)
    # = 24320; J = 4 pairs(64) = 16128.
    assert scores["are/A"] == pytest.approx(1 - 2 * 16128 / (16128 + 24320))
    assert scores["precision@0.5/E"] == scores["recall@0.5/E"] == 1.0 and "are/E" not in scores
