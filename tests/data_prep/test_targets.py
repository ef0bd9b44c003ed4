"""Targets: hand-worked tertiary maps, markers and weight maps, plus per-cell reference implementations.

The references are straightforward (per cell, or whole-image scipy filters, or one distance transform per
cell over the whole image) and are also run on real CTC frames, so the tiled and partner-box code paths of
the module are checked against them on the data they were tuned for.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from celltune.data_prep import targets
from celltune.data_prep.common import UserInputError
from celltune.data_prep.targets import (
    TERTIARY_BOUNDARY,
    TERTIARY_CELL,
    _box_reduce,
    _foreground_tiles,
    _groups,
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
    """Guo et al. Algorithm 1 written cell by cell, straight from the paper's description.

    Each cell is handled in its bounding box grown by more than both widths, which holds everything the
    cell's dilation, erosion and ring window can reach.
    """
    cross = ndimage.generate_binary_structure(labels.ndim, 1)
    window = np.ones((2 * ring + 1,) * labels.ndim, dtype=bool)
    out = np.zeros(labels.shape, dtype=np.uint8)
    pad = max(dilation, ring) + 1
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = tuple(
            slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, labels.shape, strict=True)
        )
        sub, view = labels[grown], out[grown]
        cell = sub == label
        near = ndimage.binary_dilation(cell, structure=cross, iterations=dilation) if dilation else cell
        view[near & (sub == 0)] = TERTIARY_BOUNDARY
        view[cell] = TERTIARY_CELL
        ring_pixels = cell & ~ndimage.binary_erosion(cell, structure=window, border_value=1)
        near_other = ndimage.binary_dilation((sub > 0) & ~cell, structure=window)
        view[ring_pixels & near_other] = TERTIARY_BOUNDARY
    return out


def _mask_marker_filters(labels: np.ndarray, erosion: int) -> np.ndarray:
    """Mask and marker from whole-image scipy rank filters, plus the most-interior seed of lost cells."""
    size = (erosion,) * 2 if labels.ndim == 2 else (min(erosion, 3), erosion, erosion)
    top = ndimage.maximum_filter(labels, size=size, mode="nearest")
    bottom = ndimage.minimum_filter(labels, size=size, mode="nearest")
    marker = (labels > 0) & (top == labels) & (bottom == labels)
    for label in set(np.unique(labels[labels > 0])) - set(np.unique(labels[marker])):
        cell = labels == label
        depth = ndimage.distance_transform_edt(np.pad(cell, 1))[(slice(1, -1),) * labels.ndim]
        depth[~cell] = 0
        blobs, _ = ndimage.label(depth == depth.max(), structure=np.ones((3,) * labels.ndim))
        marker |= blobs == 1
    return np.stack([labels > 0, marker]).astype(np.uint8)


def _sparse_frame() -> np.ndarray:
    """A mostly empty 260x300 frame: far-apart groups, touching and close pairs, cells at the image edge."""
    labels = np.zeros((260, 300), dtype=np.uint16)
    labels[10:30, 10:40] = 3
    labels[10:30, 40:60] = 9  # touches 3
    labels[34:50, 20:45] = 4  # 4 px below 3
    labels[120:150, 200:230] = 12  # alone in the middle
    labels[230:260, 0:25] = 7  # cut by the image corner
    labels[240:255, 30:50] = 8  # 5 px right of 7
    labels[100:104, 290:300] = 2  # thin, at the right edge
    labels[200:205, 150:152] = 5  # too small for most erosions
    return labels


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


@pytest.mark.parametrize(
    "size",
    [(5, 5), (2, 2), (20, 20), (3, 2, 2), (1, 4, 7), (9, 1), (7, 8), (16, 13), (40, 3), (2, 33, 31), (3, 10, 20)],
)
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


def _separated(labels: np.ndarray) -> np.ndarray:
    """The paper's split of touching cells: a pixel next to (8-connected) a higher id becomes background."""
    return (labels > 0) & (ndimage.maximum_filter(labels, size=3, mode="nearest") == labels)


def _weights_brute_force(labels: np.ndarray, w0: float, sigma: float) -> np.ndarray:
    """Exact map: one distance transform of the whole image per cell, no cut-off."""
    foreground = _separated(labels)
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
    # Away from the gap the term fades: d1 = 1, d2 = 16 at (10, 4) still counts (0.031) ...
    assert weight[10, 4] == pytest.approx(w_bg + 10 * np.exp(-(17**2) / 50), rel=1e-5)
    # ... d1 = 2, d2 = 17 at (10, 3) gives 10 exp(-361 / 50) = 0.007 < 0.01, which is dropped.
    assert weight[10, 3] == pytest.approx(w_bg, rel=1e-6)


def test_weight_map_keeps_terms_down_to_the_cut_off():
    labels = np.zeros((30, 40), dtype=np.uint16)
    labels[:, 1] = 1
    labels[10, 19] = 2  # a one-pixel cell 18 columns right of cell 1
    _, weight = unet_weight_map(labels)
    w_bg = labels.size / (2 * (labels.size - 31))
    # Row 10 between the cells: d1 + d2 = 18 everywhere (distances add up along the line): 0.0153.
    np.testing.assert_allclose(weight[10, 2:19], w_bg + 10 * np.exp(-(18**2) / 50), rtol=1e-5)
    # Three rows up, next to cell 1: d1 + d2 = 1 + sqrt(17^2 + 3^2) = 18.26, term 0.0127 still counts.
    assert weight[7, 2] == pytest.approx(w_bg + 10 * np.exp(-((1 + np.sqrt(298)) ** 2) / 50), rel=1e-5)
    # Beyond cell 2: d1 + d2 = 3 + 20 = 23, term 0.0026: dropped.
    assert weight[10, 22] == pytest.approx(w_bg, rel=1e-6)


def test_weight_map_ignores_a_cell_that_gives_up_every_pixel():
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[0:10, 1] = 1  # one pixel wide, touching the higher id 2 along its whole length
    labels[0:10, 2:10] = 2
    foreground, weight = unet_weight_map(labels)
    np.testing.assert_array_equal(foreground, labels == 2)
    # Only one cell is left, so there is no second-nearest cell and no border term anywhere.
    np.testing.assert_allclose(weight, np.where(labels == 2, 400 / (2 * 80), 400 / (2 * 320)), rtol=1e-6)


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


def _weights_previous(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """The implementation replaced by the partner boxes: a distance transform per cell in its box + margin.

    Kept as the reference the faster code must match to 0.01 (it keeps sub-0.01 terms where boxes overlap).
    """
    foreground = _separated(labels)
    n_total, n_fg = foreground.size, int(foreground.sum())
    weight = np.ones(labels.shape, dtype=np.float32)
    if n_fg and n_total - n_fg:
        weight[foreground] = n_total / (2.0 * n_fg)
        weight[~foreground] = n_total / (2.0 * (n_total - n_fg))
    margin = int(np.ceil(sigma * np.sqrt(2.0 * np.log(max(w0 / 0.01, 1.0 + 1e-9)))))
    kept = np.where(foreground, labels, 0)
    d1 = np.full(labels.shape, np.inf, dtype=np.float32)
    d2 = np.full(labels.shape, np.inf, dtype=np.float32)
    for label, box in enumerate(ndimage.find_objects(kept), start=1):
        if box is None:
            continue
        grown = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, labels.shape, strict=True)
        )
        distance = ndimage.distance_transform_edt(kept[grown] != label).astype(np.float32)
        near, second = d1[grown], d2[grown]
        second[...] = np.minimum(second, np.maximum(near, distance))
        near[...] = np.minimum(near, distance)
    background = ~foreground & np.isfinite(d2)
    total = d1[background] + d2[background]
    weight[background] += (w0 * np.exp(-(total**2) / (2.0 * sigma**2))).astype(np.float32)
    return foreground.astype(np.uint8), weight


def test_weight_map_on_a_sparse_frame_matches_the_references():
    labels = _sparse_frame()
    labels[60:90, 100:101] = 20  # one pixel wide, touching 21: gives up every pixel
    labels[60:90, 101:120] = 21
    labels[150:200, 40:45] = 30  # an L whose box corner (empty) comes close to 31
    labels[195:200, 40:80] = 30
    labels[160:175, 60:75] = 31
    foreground, weight = unet_weight_map(labels)
    np.testing.assert_array_equal(foreground, _separated(labels))
    assert not foreground[labels == 20].any()
    np.testing.assert_allclose(weight, _weights_brute_force(labels, 10.0, 5.0), atol=0.01, rtol=0)
    np.testing.assert_allclose(weight, _weights_previous(labels)[1], atol=0.01, rtol=0)
    # The lone cell 12 is more than 18.6 px from every other cell: no border term around it.
    ring = ndimage.binary_dilation(labels == 12, iterations=5) & (labels == 0)
    assert np.all(weight[ring] == weight[0, 299])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
@pytest.mark.parametrize("w0, sigma", [(10.0, 5.0), (3.0, 12.0), (0.005, 5.0)])
def test_weight_map_dtypes_and_parameters_match_brute_force(dtype, w0, sigma):
    labels = _blobs((70, 90), 14, seed=7, dtype=dtype)
    if dtype == np.int64:
        labels[labels > 0] += 2**40  # ids far beyond any bincount or find_objects table
    foreground, weight = unet_weight_map(labels, w0=w0, sigma=sigma)
    np.testing.assert_array_equal(foreground, _separated(labels))
    np.testing.assert_allclose(weight, _weights_brute_force(labels, w0, sigma), atol=0.01, rtol=0)


@pytest.mark.parametrize("region_cost, dense_share", [(0, 2.0), (10**9, 2.0), (0, 0.0)])
def test_contact_filters_are_the_same_per_pair_or_over_the_crop(monkeypatch, region_cost, dense_share):
    # region_cost 0 makes per-pair regions always win, 10**9 forces the one whole-crop filter; dense_share 0
    # makes tertiary_target look for touching cells over its tiles instead.
    monkeypatch.setattr(targets, "_REGION_COST", region_cost)
    monkeypatch.setattr(targets, "_DENSE_SHARE", dense_share)
    for labels in (_sparse_frame(), _blobs((80, 70), 20, seed=8), _blobs((10, 30, 30), 8, seed=9)):
        foreground, _ = unet_weight_map(labels, w0=0.0)
        np.testing.assert_array_equal(foreground, _separated(labels))
        for ring in (1, 2, 4):
            dilation = 2 if labels.ndim == 2 else 5
            np.testing.assert_array_equal(
                tertiary_target(labels, ring_width=ring), _tertiary_per_cell(labels, dilation, ring)
            )


def test_groups_follow_chains_of_edges_in_any_order():
    groups = _groups(8, np.array([6, 3, 1, 5]), np.array([5, 0, 2, 3]))  # 0-3-5-6 and 1-2; 4 and 7 alone
    assert [set(np.flatnonzero(groups == g)) for g in np.unique(groups)] == [{0, 3, 5, 6}, {1, 2}, {4}, {7}]


@pytest.mark.parametrize("grow", [0, 2, 5, 20])
def test_foreground_tiles_are_disjoint_and_hold_every_neighbourhood(monkeypatch, grow):
    monkeypatch.setattr(targets, "_TILE_COST", 0)  # cut along every wide enough empty band
    labels = _sparse_frame()
    tiles = _foreground_tiles(labels > 0, grow)
    cover = np.zeros(labels.shape, dtype=int)
    for box in tiles:
        cover[box] += 1
    assert cover.max() == 1
    window = np.ones((2 * grow + 1,) * 2, dtype=bool)
    near = ndimage.binary_dilation(labels > 0, structure=window) if grow else labels > 0
    assert np.all(cover[near] == 1)
    if grow <= 5:
        assert len(tiles) > 3  # the distant groups do get their own tiles


@pytest.mark.parametrize("tile_cost", [0, targets._TILE_COST])
@pytest.mark.parametrize("dilation, ring", [(2, 2), (0, 1), (3, 0), (5, 4)])
def test_tertiary_on_a_sparse_frame_matches_per_cell_algorithm(monkeypatch, tile_cost, dilation, ring):
    monkeypatch.setattr(targets, "_TILE_COST", tile_cost)
    labels = _sparse_frame()
    np.testing.assert_array_equal(
        tertiary_target(labels, dilation_iterations=dilation, ring_width=ring),
        _tertiary_per_cell(labels, dilation, ring),
    )


@pytest.mark.parametrize("tile_cost", [0, targets._TILE_COST])
@pytest.mark.parametrize("erosion", [2, 3, 5, 10, 20])
def test_marker_on_a_sparse_frame_matches_whole_image_filters(monkeypatch, tile_cost, erosion):
    monkeypatch.setattr(targets, "_TILE_COST", tile_cost)
    labels = _sparse_frame()
    np.testing.assert_array_equal(mask_marker_target(labels, erosion), _mask_marker_filters(labels, erosion))


@pytest.mark.parametrize(
    "labels",
    [
        np.array([[0, 3, 3, 0, 0, 5, 5, 5, 0, 2]], dtype=np.uint16),
        np.array([[1], [1], [0], [4], [4], [0], [0], [7]], dtype=np.uint8),
        _blobs((9, 40, 36), 10, seed=11, dtype=np.uint16),
    ],
    ids=["one-row", "one-column", "3d"],
)
def test_thin_and_3d_frames_match_references(labels):
    dilation = 2 if labels.ndim == 2 else 5
    np.testing.assert_array_equal(tertiary_target(labels), _tertiary_per_cell(labels, dilation, 2))
    for erosion in (2, 3, 5):
        np.testing.assert_array_equal(mask_marker_target(labels, erosion), _mask_marker_filters(labels, erosion))
    foreground, weight = unet_weight_map(labels)
    np.testing.assert_array_equal(foreground, _separated(labels))
    np.testing.assert_allclose(weight, _weights_brute_force(labels, 10.0, 5.0), atol=0.01, rtol=0)


# Real frames named in the speed-up work: many and few GOWT1 nuclei on 1024x1024, HeLa silver and gold
# truth (touching cells, erosion 20), SIM+ with cells cut by the image edge.
_REAL_FRAMES = [
    ("Fluo-N2DH-GOWT1/02_GT/SEG/man_seg052.tif", False),
    ("Fluo-N2DH-GOWT1/01_GT/SEG/man_seg002.tif", True),
    ("DIC-C2DH-HeLa/01_ST/SEG/man_seg010.tif", True),
    ("DIC-C2DH-HeLa/02_GT/SEG/man_seg006.tif", True),
    ("Fluo-N2DH-SIM+/02_GT/SEG/man_seg133.tif", False),
    ("Fluo-N2DH-SIM+/01_GT/SEG/man_seg040.tif", False),
]


@pytest.mark.real_data
@pytest.mark.parametrize("name, exact", _REAL_FRAMES)
def test_targets_on_real_frames_match_the_references(ctc_data_dir, name, exact):
    labels = tifffile.imread(ctc_data_dir / name)
    foreground, weight = unet_weight_map(labels)
    previous_foreground, previous_weight = _weights_previous(labels)
    np.testing.assert_array_equal(foreground, previous_foreground)
    np.testing.assert_allclose(weight, previous_weight, atol=0.01, rtol=0)
    if exact:  # one whole-image distance transform per cell: only for frames with few cells or pixels
        np.testing.assert_allclose(weight, _weights_brute_force(labels, 10.0, 5.0), atol=0.01, rtol=0)
    np.testing.assert_array_equal(tertiary_target(labels), _tertiary_per_cell(labels, 2, 2))
    erosion = marker_erosion_for(name.split("/")[0])
    np.testing.assert_array_equal(mask_marker_target(labels, erosion), _mask_marker_filters(labels, erosion))


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
