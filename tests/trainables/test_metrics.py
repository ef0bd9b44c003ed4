"""SEG and foreground IoU: hand-computed tiny cases and agreement with py-ctcmetrics on real GT."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from celltune.data_prep.common import UserInputError
from celltune.trainables.metrics import pixel_iou, seg_counts, seg_score


def test_single_object_partial_overlap_hand_computed():
    reference = np.zeros((8, 8), dtype=np.uint16)
    reference[2:6, 2:6] = 3  # 16 px
    result = np.zeros((8, 8), dtype=np.int32)
    result[3:6, 3:7] = 9  # 12 px, 9 of them inside R -> 9 > 8 matches
    total, n = seg_counts(reference, result)
    assert n == 1
    assert total == pytest.approx(9 / (16 + 12 - 9))


def test_unmatched_reference_counts_zero():
    reference = np.zeros((6, 10), dtype=np.uint8)
    reference[1:4, 1:4] = 1
    reference[1:4, 6:9] = 2
    result = np.zeros_like(reference)
    result[1:4, 1:4] = 5  # exact copy of object 1, nothing on object 2
    assert seg_counts(reference, result) == (1.0, 2)
    assert seg_score([seg_counts(reference, result)]) == 0.5


def test_exactly_half_does_not_match_but_one_more_pixel_does():
    reference = np.zeros((4, 8), dtype=np.uint8)
    reference[0:2, 0:4] = 1  # 8 px
    half = np.zeros_like(reference)
    half[0:2, 0:2] = 1  # 4 px = exactly half
    assert seg_counts(reference, half) == (0.0, 1)
    more = half.copy()
    more[0, 2] = 1  # 5 px
    assert seg_counts(reference, more) == (pytest.approx(5 / 8), 1)


def test_split_result_halves_match_nothing_and_merged_result_matches_both():
    reference = np.zeros((4, 8), dtype=np.uint16)
    reference[:, 0:4], reference[:, 4:8] = 1, 2
    split = np.zeros_like(reference)
    split[:2, 0:4], split[2:, 0:4] = 1, 2  # object 1 cut in two halves
    split[:, 4:8] = 3
    assert seg_counts(reference, split) == (1.0, 2)
    merged = np.ones_like(reference)
    assert seg_counts(reference, merged) == (pytest.approx(0.5 + 0.5), 2)


def test_aggregation_is_over_objects_not_frames():
    assert seg_score([(1.5, 2), (0.5, 2), (0.0, 0)]) == 0.5
    assert seg_score([(1.0, 1), (0.0, 3)]) == 0.25
    assert seg_score([]) == 0.0


def test_empty_frames():
    empty = np.zeros((5, 5), dtype=np.uint16)
    some = empty.copy()
    some[1:3, 1:3] = 4
    assert seg_counts(empty, some) == (0.0, 0)
    assert seg_counts(some, empty) == (0.0, 1)
    assert pixel_iou(empty, empty) == 1.0
    assert pixel_iou(some, empty) == 0.0


def test_3d_and_large_sparse_ids():
    reference = np.zeros((3, 6, 6), dtype=np.int32)
    reference[0:2, 0:3, 0:3] = 70000  # 18 voxels
    reference[:, 4:6, 4:6] = 5  # 12 voxels
    result = np.zeros_like(reference)
    result[0:3, 0:3, 0:3] = 2**30  # 27 voxels, covers all 18
    result[0:1, 4:6, 4:6] = 1  # 4 of 12: no match
    total, n = seg_counts(reference, result)
    assert n == 2 and total == pytest.approx(18 / 27)


def test_pixel_iou_ignores_instance_ids():
    reference = np.zeros((4, 4), dtype=np.uint8)
    reference[0:2, :] = 1
    result = np.zeros((4, 4), dtype=np.uint16)
    result[1:3, :2] = 7
    result[1:3, 2:] = 8
    # intersection: row 1 (4 px); union: rows 0-2 (12 px)
    assert pixel_iou(reference, result) == pytest.approx(4 / 12)


def test_bad_inputs():
    with pytest.raises(UserInputError, match="shape"):
        seg_counts(np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(UserInputError, match="float64"):
        seg_counts(np.zeros((4, 4), dtype=np.uint8), np.zeros((4, 4)))
    with pytest.raises(UserInputError, match="negative"):
        pixel_iou(np.full((2, 2), -1, dtype=np.int32), np.zeros((2, 2), dtype=np.int32))


def _perturbations(gt: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Realistic ways a result differs from GT: thinner, shifted, merged, missing and spurious objects."""
    eroded = np.where(ndimage.minimum_filter(gt, size=7) == ndimage.maximum_filter(gt, size=7), gt, 0)
    shifted = np.roll(gt, (5, -3), axis=(0, 1))
    merged = np.where(gt % 2 == 1, gt + 1, gt)  # odd ids join the next even id
    ids = np.unique(gt[gt > 0])
    dropped = np.where(np.isin(gt, rng.choice(ids, size=max(1, ids.size // 3), replace=False)), 0, gt)
    grown = ndimage.grey_dilation(gt, size=9)
    grown[:40, :40] = 999  # a spurious object
    relabelled = np.zeros(int(gt.max()) + 1, dtype=np.int32)
    relabelled[ids] = rng.permutation(ids.size) + 1000
    return {
        "eroded": eroded,
        "shifted": shifted,
        "merged": merged,
        "dropped": dropped,
        "grown": grown,
        "relabelled": relabelled[gt],
    }


@pytest.mark.real_data
@pytest.mark.parametrize("dataset", ["DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "Fluo-N2DH-SIM+"])
def test_seg_equals_py_ctcmetrics_on_real_gt(ctc_data_dir, tmp_path, dataset):
    from ctc_metrics.metrics import seg
    from ctc_metrics.utils.representations import match

    rng = np.random.default_rng(0)
    frames = sorted((ctc_data_dir / dataset / "01_GT" / "SEG").glob("man_seg*.tif"))[:2]
    ours, theirs_labels, theirs_ious = [], [], []
    for frame in frames:
        gt = tifffile.imread(frame).astype(np.int32)
        ref_path = tmp_path / f"ref_{frame.name}"
        tifffile.imwrite(ref_path, gt)
        for name, result in _perturbations(gt, rng).items():
            result_path = tmp_path / f"res_{name}_{frame.name}"
            tifffile.imwrite(result_path, result.astype(np.int32))
            labels_ref, _, _, _, ious = match(str(ref_path), str(result_path))
            counts = seg_counts(gt, result)
            assert counts[1] == len(labels_ref)
            assert counts[0] == pytest.approx(float(np.sum(ious)), abs=1e-9), f"{frame.name} {name}"
            ours.append(counts)
            theirs_labels.append(labels_ref)
            theirs_ious.append(ious)
    assert seg_score(ours) == pytest.approx(seg(theirs_labels, theirs_ious), abs=1e-12)
    assert 0.0 < seg_score(ours) < 1.0
