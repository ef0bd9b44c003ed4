"""Post-processing: hand-built probability maps with holes, speckle, touching discs and bad parameters."""

from __future__ import annotations

import numpy as np
import pytest

from celltune.data_prep.common import UserInputError
from celltune.trainables.metrics import seg_counts
from celltune.trainables.postprocess import (
    binary_to_instances,
    mask_marker_to_instances,
    one_hot,
    tertiary_to_instances,
)
from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS, postprocess


def _touching_discs(shape=(60, 80), radius=14, centres=((30, 25), (30, 51))) -> np.ndarray:
    """Two discs whose centres are 26 px apart: they overlap in a narrow neck."""
    yy, xx = np.indices(shape)
    labels = np.zeros(shape, dtype=np.int32)
    for label, (cy, cx) in enumerate(centres, start=1):
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2) & (labels == 0)] = label
    return labels


def test_one_hot():
    classes = np.array([[0, 2], [1, 2]])
    expected = np.array([[[1, 0], [0, 0]], [[0, 0], [1, 0]], [[0, 1], [0, 1]]], dtype=np.float32)
    np.testing.assert_array_equal(one_hot(classes, 3), expected)


def test_tertiary_cell_must_beat_both_other_classes():
    probs = np.zeros((3, 3, 3), dtype=np.float32)
    probs[2] = 0.4
    probs[0] = 0.3
    probs[1] = 0.3
    probs[1, 0, 0] = 0.4  # tie with cell: not cell
    probs[0, 2, 2] = 0.5  # background wins
    labels = tertiary_to_instances(probs, min_area=0, hole_area=0)
    expected = np.ones((3, 3), dtype=np.int32)
    expected[0, 0] = expected[2, 2] = 0
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32


def test_tertiary_components_are_face_connected_and_numbered_sequentially():
    classes = np.zeros((6, 6), dtype=np.uint8)
    classes[0:2, 0:2] = 2
    classes[2:4, 2:4] = 2  # touches the first block only diagonally
    classes[4:6, 4:6] = 2
    labels = tertiary_to_instances(one_hot(classes, 3), min_area=0, hole_area=0)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]


def test_tertiary_removes_objects_below_min_area():
    classes = np.zeros((10, 10), dtype=np.uint8)
    classes[0:5, 0:5] = 2  # 25 px
    classes[7:9, 7:9] = 2  # 4 px
    probs = one_hot(classes, 3)
    assert tertiary_to_instances(probs, min_area=4, hole_area=0).max() == 2
    kept = tertiary_to_instances(probs, min_area=5, hole_area=0)
    assert kept.max() == 1 and kept[7:9, 7:9].sum() == 0 and (kept[0:5, 0:5] == 1).all()


def test_tertiary_fills_holes_below_hole_area_only_inside_one_object():
    classes = np.zeros((12, 20), dtype=np.uint8)
    classes[1:8, 1:8] = 2
    classes[3:6, 3:6] = 1  # 9 px hole (boundary class) in object A
    classes[0:6, 12:20] = 2
    classes[0:2, 15:17] = 0  # notch at the image edge: not a hole
    probs = one_hot(classes, 3)
    unfilled = tertiary_to_instances(probs, min_area=0, hole_area=9)
    assert (unfilled[3:6, 3:6] == 0).all()
    filled = tertiary_to_instances(probs, min_area=0, hole_area=10)
    assert (filled[3:6, 3:6] == filled[1, 1]).all() and filled[1, 1] > 0
    assert (filled[0:2, 15:17] == 0).all()

    # A background ring between an object and an island inside it touches two objects: not filled.
    classes = np.zeros((9, 9), dtype=np.uint8)
    classes[1:8, 1:8] = 2
    classes[2:7, 2:7] = 0
    classes[4, 4] = 2
    labels = tertiary_to_instances(one_hot(classes, 3), min_area=0, hole_area=50)
    assert labels.max() == 2 and (labels[2:7, 2:7] > 0).sum() == 1


def test_tertiary_grow_enters_boundary_but_not_background():
    classes = np.zeros((5, 12), dtype=np.uint8)
    classes[:, 0:4] = 2
    classes[:, 4:8] = 1  # 4 boundary columns between the two cells
    classes[:, 8:10] = 2
    # columns 10, 11 background
    probs = one_hot(classes, 3)
    def first_row(grow: int) -> list[int]:
        return tertiary_to_instances(probs, min_area=0, grow=grow)[0].tolist()

    assert first_row(0) == [1] * 4 + [0] * 4 + [2] * 2 + [0, 0]
    assert first_row(1) == [1] * 5 + [0, 0] + [2] * 3 + [0, 0]
    assert first_row(5) == [1] * 6 + [2] * 4 + [0, 0]


def test_tertiary_3d_uses_3d_connectivity():
    classes = np.zeros((4, 6, 6), dtype=np.uint8)
    classes[0:2, 1:3, 1:3] = 2
    classes[2:4, 1:3, 1:3] = 2  # same column, next slices: one object in 3D
    classes[1, 4:6, 4:6] = 2
    labels = tertiary_to_instances(one_hot(classes, 3), min_area=0, hole_area=0)
    assert labels.shape == (4, 6, 6) and labels.max() == 2
    assert len(np.unique(labels[:, 1:3, 1:3])) == 1


def test_mask_marker_watershed_splits_touching_discs_at_the_neck():
    gt = _touching_discs()
    mask = (gt > 0).astype(np.float32)
    marker = np.zeros_like(mask)
    marker[28:33, 22:28] = 1
    marker[28:33, 48:54] = 1
    labels = mask_marker_to_instances(np.stack([mask, marker]), min_area=0)
    assert labels.max() == 2
    total, n = seg_counts(gt, labels)
    assert total / n > 0.95
    one = mask_marker_to_instances(np.stack([mask, marker * (np.indices(mask.shape)[1] < 40)]), min_area=0)
    assert one.max() == 1 and (one > 0).sum() == (gt > 0).sum()


def test_mask_marker_thresholds_drop_unseeded_blobs_and_small_objects():
    probs = np.zeros((2, 20, 20), dtype=np.float32)
    probs[0, 2:8, 2:8] = 0.9
    probs[1, 4:6, 4:6] = 0.7
    probs[0, 12:18, 12:18] = 0.9  # a mask blob without any marker
    probs[0, 10:12, 2:4] = 0.9
    probs[1, 10:12, 2:4] = 0.9  # a 4 px object
    labels = mask_marker_to_instances(probs, min_area=5)
    assert labels.max() == 1 and (labels == 1).sum() == 36
    assert mask_marker_to_instances(probs, marker_threshold=0.8, min_area=5).max() == 0
    assert mask_marker_to_instances(probs, min_area=0).max() == 2
    assert mask_marker_to_instances(probs, mask_threshold=0.95).max() == 0


def test_binary_watershed_splits_touching_discs():
    gt = _touching_discs()
    fg = (gt > 0).astype(np.float32)
    probs = np.stack([1 - fg, fg])
    assert binary_to_instances(probs, min_area=0).max() == 1
    labels = binary_to_instances(probs, watershed=True, min_distance=5, min_area=0)
    assert labels.max() == 2
    total, n = seg_counts(gt, labels)
    assert total / n > 0.95


def test_binary_threshold_and_min_area():
    probs = np.zeros((2, 10, 10), dtype=np.float32)
    probs[1, 0:4, 0:4] = 0.6
    probs[1, 7:9, 7:9] = 0.9
    probs[0] = 1 - probs[1]
    assert binary_to_instances(probs, min_area=0).max() == 2
    assert binary_to_instances(probs, min_area=5).max() == 1
    assert binary_to_instances(probs, threshold=0.7, min_area=0).max() == 1
    assert binary_to_instances(probs, watershed=True, min_area=5).max() == 1


def test_dispatcher_uses_defaults_and_rejects_unknown_names():
    classes = np.zeros((10, 10), dtype=np.uint8)
    classes[1:9, 1:9] = 2
    classes[0, 0] = 2  # 1 px speckle: below the default min_area
    probs = one_hot(classes, 3)
    np.testing.assert_array_equal(postprocess("tertiary", probs), tertiary_to_instances(probs))
    assert postprocess("tertiary", probs).max() == 1
    assert postprocess("tertiary", probs, min_area=1).max() == 2
    assert set(DEFAULT_POSTPROCESS_PARAMS) == {"tertiary", "mask_marker", "binary"}
    with pytest.raises(ValueError, match=r"'tertary'.*did you mean 'tertiary'.*binary, mask_marker, tertiary"):
        postprocess("tertary", probs)
    with pytest.raises(ValueError, match=r"'min_size'.*did you mean 'min_area'.*grow, hole_area, min_area"):
        postprocess("tertiary", probs, min_size=3)


@pytest.mark.parametrize(
    "kind, params, message",
    [
        ("tertiary", {"min_area": -1}, "min_area=-1"),
        ("tertiary", {"grow": 1.5}, "grow=1.5"),
        ("mask_marker", {"mask_threshold": 1.5}, "mask_threshold=1.5"),
        ("binary", {"watershed": "yes"}, "watershed='yes'"),
        ("binary", {"min_distance": 0}, "min_distance=0"),
    ],
)
def test_bad_parameter_values(kind, params, message):
    channels = 3 if kind == "tertiary" else 2
    with pytest.raises(UserInputError, match=message):
        postprocess(kind, np.zeros((channels, 4, 4), dtype=np.float32), **params)


def test_bad_probability_shapes():
    with pytest.raises(UserInputError, match=r"shape \(2, 4, 4\)"):
        tertiary_to_instances(np.zeros((2, 4, 4), dtype=np.float32))
    with pytest.raises(UserInputError, match="dtype uint8"):
        binary_to_instances(np.zeros((2, 4, 4), dtype=np.uint8))


def test_default_table_matches_function_defaults():
    import inspect

    functions = {
        "tertiary": tertiary_to_instances,
        "mask_marker": mask_marker_to_instances,
        "binary": binary_to_instances,
    }
    for kind, function in functions.items():
        signature = inspect.signature(function).parameters
        assert {name: p.default for name, p in signature.items() if name != "probs"} == DEFAULT_POSTPROCESS_PARAMS[kind]
