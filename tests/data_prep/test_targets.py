"""Targets: hand-worked tertiary maps, markers and weight maps, plus per-cell reference implementations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from celltune.data_prep.errors import UserInputError
from celltune.data_prep.targets import (
    TERTIARY_BOUNDARY,
    TERTIARY_CELL,
    _box_reduce,
    marker_erosion_for,
    mask_marker_target,
    target_parameters,
    tertiary_target,
    unet_weight_map,
)


def _from_rows(rows: list[str]) -> np.ndarray:
    return np.array([[int(c) for c in row] for row in rows], dtype=np.uint8)


def _blobs(shape: tuple[int, ...], n: int, seed: int, dtype=np.int32) -> np.ndarray:
    """Touching Voronoi-like cells with gaps in the ids, background where far from every seed."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, dtype=np.int32)
    points = tuple(rng.integers(0, s, n) for s in shape)
    seeds[points] = rng.choice(np.arange(1, 4 * n), size=n, replace=False)
    distance, index = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[tuple(index)]
    labels[distance > 6] = 0
    return labels.astype(dtype)


def _tertiary_per_cell(labels: np.ndarray, dilation: int, ring: int) -> np.ndarray:
    """Guo et al. Algorithm 1 written cell by cell, straight from the paper's description."""
    cross = ndimage.generate_binary_structure(labels.ndim, 1)
    window = np.ones((2 * ring + 1,) * labels.ndim, dtype=bool)
    out = np.zeros(labels.shape, dtype=np.uint8)
    for label in np.unique(labels[labels > 0]):
        cell = labels == label
        grown = ndimage.binary_dilation(cell, structure=cross, iterations=dilation)
        out[grown & (labels == 0)] = TERTIARY_BOUNDARY
        out[cell] = TERTIARY_CELL
        ring_pixels = cell & ~ndimage.binary_erosion(cell, structure=window, border_value=1)
        others = (labels > 0) & ~cell
        near_other = ndimage.binary_dilation(others, structure=window)
        out[ring_pixels & near_other] = TERTIARY_BOUNDARY
    return out


def test_tertiary_two_touching_squares_exact_map():
    labels = np.zeros((9, 14), dtype=np.uint16)
    labels[2:7, 2:7] = 1
    labels[2:7, 7:12] = 7  # gap in ids
    expected = _from_rows(
        [
            "00111111111100",
            "01111111111110",
            "11222111122211",
            "11222111122211",
            "11222111122211",
            "11222111122211",
            "11222111122211",
            "01111111111110",
            "00111111111100",
        ]
    )
    np.testing.assert_array_equal(tertiary_target(labels), expected)


def test_tertiary_isolated_cell_has_no_inner_boundary():
    labels = np.zeros((7, 7), dtype=np.uint8)
    labels[3, 3] = 5
    expected = _from_rows(["0000000", "0001000", "0011100", "0112110", "0011100", "0001000", "0000000"])
    np.testing.assert_array_equal(tertiary_target(labels), expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32])
def test_tertiary_matches_per_cell_algorithm_2d(dtype):
    labels = _blobs((80, 96), 25, seed=1, dtype=dtype)
    got = tertiary_target(labels)
    assert got.dtype == np.uint8 and got.shape == labels.shape
    np.testing.assert_array_equal(got, _tertiary_per_cell(labels, 2, 2))


def test_tertiary_matches_per_cell_algorithm_3d_with_default_dilation_5():
    labels = _blobs((12, 40, 36), 12, seed=2)
    np.testing.assert_array_equal(tertiary_target(labels), _tertiary_per_cell(labels, 5, 2))


def test_tertiary_cell_at_image_edge_and_empty_frame():
    labels = np.zeros((6, 6), dtype=np.uint16)
    np.testing.assert_array_equal(tertiary_target(labels), 0)
    labels[:3, :3] = 2
    labels[:3, 3:] = 3
    np.testing.assert_array_equal(tertiary_target(labels), _tertiary_per_cell(labels, 2, 2))


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.zeros((4, 4), dtype=np.float32), "float32"),
        (np.zeros((4,), dtype=np.uint16), "1 dimensions"),
        (np.full((4, 4), -1, dtype=np.int32), "negative"),
        (np.zeros((4, 4), dtype=bool), "bool"),
    ],
)
def test_bad_labels_raise_user_input_error(labels, message):
    for call in (tertiary_target, lambda x: mask_marker_target(x, 2), unet_weight_map):
        with pytest.raises(UserInputError, match=message):
            call(labels)


@pytest.mark.parametrize("size", [(5, 5), (2, 2), (20, 20), (3, 2, 2), (1, 4, 7), (9, 1)])
def test_box_reduce_equals_scipy_rank_filters(size):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 50, size=(7, 31, 29)[-len(size) :]).astype(np.uint16)
    np.testing.assert_array_equal(
        _box_reduce(array, size, np.maximum), ndimage.maximum_filter(array, size=size, mode="nearest")
    )
    np.testing.assert_array_equal(
        _box_reduce(array, size, np.minimum), ndimage.minimum_filter(array, size=size, mode="nearest")
    )


def test_marker_is_square_erosion_hand_worked():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[2:8, 2:8] = 4
    out = mask_marker_target(labels, 3)
    assert out.shape == (2, 10, 10) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], labels > 0)
    expected = np.zeros((10, 10), dtype=np.uint8)
    expected[3:7, 3:7] = 1
    np.testing.assert_array_equal(out[1], expected)
    # Even side: scipy-style centring erodes one pixel at the top/left only.
    expected = np.zeros((10, 10), dtype=np.uint8)
    expected[3:8, 3:8] = 1
    np.testing.assert_array_equal(mask_marker_target(labels, 2)[1], expected)


def test_marker_not_eroded_at_image_edge():
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[:, :4] = 1
    marker = mask_marker_target(labels, 3)[1]
    assert marker[0, 0] == 1 and marker[7, 0] == 1 and marker[:, 3].sum() == 0


@pytest.mark.parametrize("erosion", [2, 5, 10, 20])
def test_every_cell_has_a_marker_inside_it_and_markers_never_touch(erosion):
    labels = _blobs((120, 110), 40, seed=3, dtype=np.uint16)
    labels[3:5, 100:102] = 999  # a 2x2 cell that no erosion >= 3 survives
    marker = mask_marker_target(labels, erosion)[1].astype(bool)
    assert np.all(labels[marker] > 0)
    assert set(np.unique(labels[marker]).tolist()) == set(np.unique(labels[labels > 0]).tolist())
    # Full connectivity: a marker blob never spans two cells (non-convex cells may have several blobs).
    components, n = ndimage.label(marker, structure=np.ones((3, 3)))
    owners = [np.unique(labels[components == i]) for i in range(1, n + 1)]
    assert all(len(o) == 1 for o in owners)


def test_touching_rectangles_get_exactly_one_marker_each():
    labels = np.zeros((30, 40), dtype=np.int32)
    labels[2:12, 2:20], labels[2:12, 20:38], labels[12:28, 5:30], labels[26:29, 31:33] = 1, 2, 3, 4
    for erosion in (2, 3, 10):
        components, n = ndimage.label(mask_marker_target(labels, erosion)[1], structure=np.ones((3, 3)))
        assert n == 4
        assert sorted(int(labels[components == i][0]) for i in range(1, 5)) == [1, 2, 3, 4]


def test_small_cell_keeps_its_most_interior_pixels():
    labels = np.zeros((9, 9), dtype=np.uint8)
    labels[2:7, 3:6] = 1  # 5 x 3: erosion 5 removes everything
    marker = mask_marker_target(labels, 5)[1]
    expected = np.zeros((9, 9), dtype=np.uint8)
    expected[3:6, 4] = 1  # the middle column, one pixel from the short sides too
    np.testing.assert_array_equal(marker, expected)


def test_marker_3d_uses_a_shallow_box_in_z():
    labels = np.zeros((5, 12, 12), dtype=np.uint16)
    labels[1:4, 2:10, 2:10] = 3
    marker = mask_marker_target(labels, 5)[1]
    expected = np.zeros_like(marker)
    expected[2, 4:8, 4:8] = 1  # z: 3 slices -> the middle one; xy: 8 - 4 = 4 pixels left
    np.testing.assert_array_equal(marker, expected)


def test_mask_marker_rejects_bad_erosion():
    with pytest.raises(UserInputError, match="erosion=0"):
        mask_marker_target(np.zeros((4, 4), dtype=np.uint8), 0)


def test_marker_erosion_table():
    assert marker_erosion_for("DIC-C2DH-HeLa") == 20
    assert marker_erosion_for("Fluo-N2DH-GOWT1") == 10
    assert marker_erosion_for("PhC-C2DH-U373") == 2
    assert marker_erosion_for("Fluo-N3DH-CE") == 2
    assert marker_erosion_for("Fluo-N2DH-SIM+") == 5
    assert marker_erosion_for("BF-C2DL-HSC") == 5


def _weights_brute_force(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    foreground, _ = unet_weight_map(labels, w0=0.0, sigma=sigma)
    kept = np.where(foreground > 0, labels, 0)
    distances = np.stack([ndimage.distance_transform_edt(kept != label) for label in np.unique(kept[kept > 0])])
    distances.sort(axis=0)
    term = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
    n_fg = foreground.sum()
    base = np.where(foreground > 0, foreground.size / (2 * n_fg), foreground.size / (2 * (foreground.size - n_fg)))
    return base + np.where(foreground > 0, 0.0, term)


def test_weight_map_peaks_in_the_gap_between_close_cells():
    labels = np.zeros((20, 40), dtype=np.uint8)
    labels[5:15, 5:18] = 1
    labels[5:15, 20:33] = 2  # two background columns (18, 19) between the cells
    foreground, weight = unet_weight_map(labels)
    np.testing.assert_array_equal(foreground, labels > 0)
    n_fg = 260
    w_bg, w_fg = 800 / (2 * (800 - n_fg)), 800 / (2 * n_fg)
    # Column 18: d1 = 1 (cell 1), d2 = 2 (cell 2) -> term 10 exp(-9 / 50).
    assert weight[10, 18] == pytest.approx(w_bg + 10 * np.exp(-9 / 50), rel=1e-5)
    assert weight[10, 10] == pytest.approx(w_fg)
    assert weight[10, 18] == weight.max()
    # Far from the gap the border term is small: d1 = 2, d2 = 17 at (10, 3).
    assert weight[10, 3] == pytest.approx(w_bg + 10 * np.exp(-(19**2) / 50), rel=1e-5)


def test_weight_map_splits_touching_cells_with_a_one_pixel_gap():
    labels = np.zeros((10, 12), dtype=np.uint16)
    labels[2:8, 1:6] = 3
    labels[2:8, 6:11] = 8
    foreground, weight = unet_weight_map(labels)
    assert foreground[4, 5] == 0 and foreground[4, 4] == 1 and foreground[4, 6] == 1  # lower id loses a column
    assert ndimage.label(foreground, structure=np.ones((3, 3)))[1] == 2
    assert weight[4, 5] == weight.max()


@pytest.mark.parametrize("w0, sigma", [(10.0, 5.0), (5.0, 3.0)])
def test_weight_map_margin_matches_full_distance_transforms(w0, sigma):
    labels = _blobs((96, 90), 18, seed=4)
    _, weight = unet_weight_map(labels, w0=w0, sigma=sigma)
    np.testing.assert_allclose(weight, _weights_brute_force(labels, w0, sigma), atol=0.01, rtol=0)


def test_weight_map_3d_and_degenerate_frames():
    labels = _blobs((8, 30, 30), 6, seed=5)
    foreground, weight = unet_weight_map(labels)
    assert foreground.shape == weight.shape == labels.shape and weight.dtype == np.float32
    np.testing.assert_allclose(weight, _weights_brute_force(labels, 10.0, 5.0), atol=0.01, rtol=0)
    empty_fg, empty_w = unet_weight_map(np.zeros((5, 5), dtype=np.uint8))
    assert empty_fg.sum() == 0 and np.all(empty_w == 1.0)
    with pytest.raises(UserInputError, match="sigma=0"):
        unet_weight_map(labels, sigma=0)


def test_target_parameters_are_json_and_follow_the_dataset():
    params = target_parameters("DIC-C2DH-HeLa", 2)
    assert json.loads(json.dumps(params)) == params
    assert params["mask_marker"]["erosion"] == 20
    assert params["tertiary"]["dilation_iterations"] == 2
    params3 = target_parameters("Fluo-N3DH-CE", 3)
    assert params3["tertiary"]["dilation_iterations"] == 5
    assert params3["mask_marker"]["footprint"] == [2, 2, 2]
    with pytest.raises(UserInputError, match="ndim=4"):
        target_parameters("x", 4)


def test_marker_fallback_with_huge_ids():
    labels = np.zeros((8, 8), dtype=np.int32)
    labels[1:4, 1:4] = 2**30
    labels[5:8, 5:8] = 7
    marker = mask_marker_target(labels, 10)[1]
    assert marker[2, 2] == 1 and marker[6, 6] == 1 and marker.sum() == 2
