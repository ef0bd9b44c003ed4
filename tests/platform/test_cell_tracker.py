"""The cell tracker on hand-made sequences: motion, divisions, cells entering and leaving, crowded
neighbours, 3D and anisotropic spacing, CTC validity of every result, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from celltune.data_prep.common import UserInputError
from celltune.platform.cell_tracker import TrackingResult, track_sequence
from celltune.platform.ctc_results import check_result

SHAPE = (64, 96)


def _disk(frame: np.ndarray, center: tuple[float, ...], radius: float, label: int) -> None:
    grids = np.ogrid[tuple(slice(0, n) for n in frame.shape)]
    inside = sum((g - c) ** 2 for g, c in zip(grids, center, strict=True)) <= radius**2
    frame[inside] = label


def _frames(objects_per_frame: list[list[tuple[tuple[float, ...], float]]], shape=SHAPE, seed=0) -> np.ndarray:
    """One label image per frame; each object gets a random id so that ids carry no identity."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(objects_per_frame), *shape), dtype=np.uint16)
    for t, objects in enumerate(objects_per_frame):
        ids = rng.choice(np.arange(1, 1000), size=len(objects), replace=False)
        for (center, radius), label in zip(objects, ids, strict=True):
            _disk(out[t], center, radius, int(label))
    return out


def _label_at(result: TrackingResult, t: int, point: tuple[int, ...]) -> int:
    return int(result.masks[(t, *point)])


def _valid(result: TrackingResult) -> None:
    assert result.masks.dtype == np.int32
    assert result.tracks.dtype == np.int64 and result.tracks.shape[1] == 4
    check_result(result.masks, result.tracks, "tracker")  # raises on any CTC rule broken


def test_moving_cell_is_one_track_with_changing_input_ids():
    frames = _frames([[((32, 20 + 5 * t), 8)] for t in range(6)])
    result = track_sequence(frames)
    _valid(result)
    assert result.tracks.tolist() == [[1, 0, 5, 0]]
    np.testing.assert_array_equal(result.masks > 0, frames > 0)  # pixels unchanged, only relabelled
    assert set(np.unique(result.masks)) == {0, 1}


def test_small_fast_cell_links_by_distance_within_max_displacement():
    # radius 3, 20 px per frame: never overlaps itself, so only the centroid fallback can link it
    frames = _frames([[((32, 10 + 20 * t), 3)] for t in range(4)])
    assert track_sequence(frames, max_displacement=25).tracks.tolist() == [[1, 0, 3, 0]]
    cut = track_sequence(frames, max_displacement=15)
    _valid(cut)
    assert cut.tracks.tolist() == [[1, 0, 0, 0], [2, 1, 1, 0], [3, 2, 2, 0], [4, 3, 3, 0]]


def test_division_ends_parent_and_starts_two_daughters():
    parent = [[((32, 48), 10)]] * 3
    daughters = [[((32, 48 - 11 - 2 * k), 7), ((32, 48 + 11 + 2 * k), 7)] for k in range(3)]
    result = track_sequence(_frames(parent + daughters))
    _valid(result)
    assert result.tracks.tolist() == [[1, 0, 2, 0], [2, 3, 5, 1], [3, 3, 5, 1]]
    assert result.num_divisions == 1
    left, right = _label_at(result, 4, (32, 35)), _label_at(result, 4, (32, 61))
    assert {left, right} == {2, 3}
    assert _label_at(result, 5, (32, 33)) == left and _label_at(result, 5, (32, 63)) == right


def test_division_off_continues_parent_into_one_daughter():
    parent = [[((32, 48), 10)]] * 2
    daughters = [[((32, 37), 7), ((32, 59), 7)]] * 2
    result = track_sequence(_frames(parent + daughters), divisions=False)
    _valid(result)
    assert result.num_divisions == 0
    assert sorted(result.tracks.tolist()) == [[1, 0, 3, 0], [2, 2, 3, 0]]


def test_cell_appearing_beside_a_cell_is_not_a_division():
    # a newcomer next to a cell that keeps its place: the daughters would sit on either side of the parent
    still = ((32, 30), 8)
    frames = _frames([[still]] * 2 + [[still, ((32, 52), 8)]] * 2)
    result = track_sequence(frames)
    _valid(result)
    assert result.tracks.tolist() == [[1, 0, 3, 0], [2, 2, 3, 0]]


def test_cells_entering_and_leaving_start_and_end_tracks():
    a = [((20, 10 + 3 * t), 6) for t in range(6)]
    b = {2: ((50, 80), 6), 3: ((50, 78), 6)}  # enters at t=2, gone after t=3
    frames = _frames([[a[t]] + ([b[t]] if t in b else []) for t in range(6)])
    result = track_sequence(frames)
    _valid(result)
    assert result.tracks.tolist() == [[1, 0, 5, 0], [2, 2, 3, 0]]
    assert _label_at(result, 3, (50, 78)) == 2 and _label_at(result, 4, (50, 78)) == 0


def test_reappearing_cell_gets_a_new_track():
    frames = _frames([[((32, 40), 8)], [((32, 41), 8)], [], [((32, 42), 8)]])
    result = track_sequence(frames)
    _valid(result)
    assert result.tracks.tolist() == [[1, 0, 1, 0], [2, 3, 3, 0]]


def test_neighbours_keep_identity_where_greedy_nearest_neighbour_would_swap():
    # markers of radius 2 (no overlap between frames), A at x=20 and B at x=30, both move by (+8, +8).
    # Greedy nearest neighbour links B to A's new place (8.2 px) and A to B's (19.7 px, 27.9 in all);
    # the assignment links each to its own (11.3 + 11.3 = 22.6).
    frames = _frames([[((32, 20), 2), ((32, 30), 2)], [((40, 28), 2), ((40, 38), 2)]])
    result = track_sequence(frames, max_displacement=25)
    _valid(result)
    assert result.tracks.tolist() == [[1, 0, 1, 0], [2, 0, 1, 0]]
    assert _label_at(result, 0, (32, 20)) == _label_at(result, 1, (40, 28))
    assert _label_at(result, 0, (32, 30)) == _label_at(result, 1, (40, 38))


def test_cells_passing_each_other_on_neighbouring_lanes_keep_identity():
    steps = 7
    frames = _frames([[((24, 10 + 12 * t), 7), ((42, 86 - 12 * t), 7)] for t in range(steps)])
    result = track_sequence(frames)
    _valid(result)
    assert len(result.tracks) == 2
    top, bottom = _label_at(result, 0, (24, 10)), _label_at(result, 0, (42, 86))
    for t in range(steps):
        assert _label_at(result, t, (24, 10 + 12 * t)) == top
        assert _label_at(result, t, (42, 86 - 12 * t)) == bottom


def test_every_track_table_is_valid_on_random_crowds():
    rng = np.random.default_rng(3)
    for seed in range(5):
        objects = []
        cells = [(rng.uniform(8, 56), rng.uniform(8, 88)) for _ in range(6)]
        for _ in range(8):
            keep = [c for c in cells if rng.random() > 0.1]
            moved = [(y + rng.normal(0, 4), x + rng.normal(0, 4)) for y, x in keep]
            if rng.random() < 0.3 and moved:
                y, x = moved.pop(0)
                moved += [(y, x - 6), (y, x + 6)]
            cells = moved + [(rng.uniform(8, 56), rng.uniform(8, 88))]
            objects.append([((y, x), rng.uniform(3, 7)) for y, x in cells])
        frames = _frames(objects, seed=seed)
        result = track_sequence(frames)
        _valid(result)
        np.testing.assert_array_equal(result.masks > 0, frames > 0)


def test_3d_division_and_motion():
    shape = (16, 40, 40)
    seq = [[((8, 20, 12 + 2 * t), 5)] for t in range(3)] + [[((8, 20, 10), 4), ((8, 20, 26), 4)]]
    frames = np.stack([_frames([objs], shape=shape, seed=t)[0] for t, objs in enumerate(seq)])
    result = track_sequence(list(frames))
    _valid(result)
    assert result.masks.shape == (4, *shape)
    assert result.tracks.tolist() == [[1, 0, 2, 0], [2, 3, 3, 1], [3, 3, 3, 1]]


def test_spacing_scales_distances():
    # a small object moving 8 slices in z: 8 px apart isotropically, 32 units with a z step of 4
    shape = (24, 16, 16)
    frames = np.stack([_frames([[((4 + 8 * t, 8, 8), 2)]], shape=shape, seed=t)[0] for t in range(2)])
    assert len(track_sequence(frames, max_displacement=20).tracks) == 1
    assert len(track_sequence(frames, max_displacement=20, spacing=(4.0, 1.0, 1.0)).tracks) == 2


def test_huge_and_sparse_input_ids():
    frames = np.zeros((2, *SHAPE), dtype=np.uint32)
    _disk(frames[0], (20, 20), 6, 4_000_000_000)
    _disk(frames[0], (40, 70), 6, 7)
    _disk(frames[1], (21, 21), 6, 12)
    _disk(frames[1], (40, 71), 6, 3_000_000_000)
    result = track_sequence(frames)
    _valid(result)
    assert result.tracks.tolist() == [[1, 0, 1, 0], [2, 0, 1, 0]]
    assert _label_at(result, 0, (20, 20)) == _label_at(result, 1, (21, 21))


def test_all_empty_frames_give_no_tracks():
    result = track_sequence(np.zeros((3, 8, 8), dtype=np.uint8))
    assert result.tracks.shape == (0, 4) and not result.masks.any()


@pytest.mark.parametrize(
    ("masks", "kwargs", "message"),
    [
        ([], {}, "empty sequence"),
        (np.zeros((4, 4), dtype=np.uint8), {}, "expected (T, Y, X)"),
        ([np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)], {}, "masks[1]: shape (4, 5) differs"),
        ([np.zeros((4, 4), np.float32)], {}, "float32 dtype"),
        ([np.full((4, 4), -1, np.int32)], {}, "negative label -1"),
        ([np.zeros((4, 4), np.uint8)], {"max_displacement": 0}, "max_displacement=0"),
        ([np.zeros((4, 4), np.uint8)], {"min_overlap": 1.5}, "min_overlap=1.5"),
        ([np.zeros((4, 4), np.uint8)], {"spacing": (1.0,)}, "spacing=(1.0,)"),
    ],
)
def test_bad_input_is_a_one_line_user_error(masks, kwargs, message):
    with pytest.raises(UserInputError) as info:
        track_sequence(masks, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)
