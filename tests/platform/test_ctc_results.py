"""CTC result folders: the files written, their validity for py-ctcmetrics, atomic replacement, read back."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from celltune.data_prep.common import UserInputError
from celltune.platform import ctc_results
from celltune.platform.cell_tracker import track_sequence
from celltune.platform.ctc_results import read_ctc_result, write_ctc_result


def _dividing_sequence() -> np.ndarray:
    """Two frames of one cell, then two daughters for two frames; input ids are arbitrary."""
    masks = np.zeros((4, 32, 160), dtype=np.uint16)
    masks[0:2, 10:20, 18:30] = 9
    masks[2:4, 10:20, 8:18] = 5
    masks[2:4, 10:20, 30:40] = 6
    masks[1, 25:30, 150:155] = 3  # a small cell far away, seen in one frame only
    return masks


def _ctc_valid(folder: Path) -> int:
    from ctc_metrics import validate_sequence

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return validate_sequence(str(folder), threads=1)["Valid"]


def test_written_folder_has_ctc_files_and_passes_py_ctcmetrics_validation(tmp_path):
    result = track_sequence(_dividing_sequence())
    folder = write_ctc_result(tmp_path / "01_RES", result.masks, result.tracks)
    assert sorted(p.name for p in folder.iterdir()) == ["mask000.tif", "mask001.tif", "mask002.tif",
                                                        "mask003.tif", "res_track.txt"]
    assert (folder / "res_track.txt").read_text() == "1 0 1 0\n2 1 1 0\n3 2 3 1\n4 2 3 1\n"
    frame = tifffile.imread(folder / "mask002.tif")
    assert frame.dtype == np.uint16
    np.testing.assert_array_equal(frame, result.masks[2])
    assert _ctc_valid(folder) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_round_trip(tmp_path):
    result = track_sequence(_dividing_sequence())
    back = read_ctc_result(write_ctc_result(tmp_path / "01_RES", result.masks, result.tracks))
    np.testing.assert_array_equal(back.masks, result.masks)
    np.testing.assert_array_equal(back.tracks, result.tracks)
    assert back.num_divisions == 1


def test_digits_follow_the_dataset_and_grow_for_long_sequences(tmp_path):
    masks = np.ones((3, 4, 4), dtype=np.uint16)
    tracks = np.array([[1, 0, 2, 0]])
    four = write_ctc_result(tmp_path / "four", masks, tracks, digits=4)
    assert sorted(p.name for p in four.glob("*.tif")) == ["mask0000.tif", "mask0001.tif", "mask0002.tif"]
    assert read_ctc_result(four).masks.shape == (3, 4, 4)
    long = write_ctc_result(tmp_path / "long", np.ones((1001, 2, 2), dtype=np.uint16), np.array([[1, 0, 1000, 0]]))
    names = sorted(p.name for p in long.glob("*.tif"))
    assert names[0] == "mask0000.tif" and names[-1] == "mask1000.tif" and len(names) == 1001


def test_3d_masks(tmp_path):
    masks = np.zeros((2, 5, 8, 8), dtype=np.int32)
    masks[:, 1:4, 2:6, 2:6] = 1
    folder = write_ctc_result(tmp_path / "01_RES", masks, np.array([[1, 0, 1, 0]]))
    assert tifffile.imread(folder / "mask001.tif").shape == (5, 8, 8)
    assert _ctc_valid(folder) == 1
    np.testing.assert_array_equal(read_ctc_result(folder).masks, masks)


def test_overwrite_replaces_the_whole_folder(tmp_path):
    target = tmp_path / "01_RES"
    write_ctc_result(target, np.ones((5, 4, 4), np.uint16), np.array([[1, 0, 4, 0]]))
    with pytest.raises(UserInputError, match="already exists and is not empty"):
        write_ctc_result(target, np.ones((2, 4, 4), np.uint16), np.array([[1, 0, 1, 0]]))
    write_ctc_result(target, np.ones((2, 4, 4), np.uint16), np.array([[1, 0, 1, 0]]), overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["mask000.tif", "mask001.tif", "res_track.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["01_RES"]
    (tmp_path / "empty").mkdir()
    write_ctc_result(tmp_path / "empty", np.ones((1, 4, 4), np.uint16), np.array([[1, 0, 0, 0]]))


def test_failure_while_writing_leaves_the_old_folder_untouched(tmp_path, monkeypatch):
    target = tmp_path / "01_RES"
    write_ctc_result(target, np.ones((3, 4, 4), np.uint16), np.array([[1, 0, 2, 0]]))
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real = ctc_results._write_tiff
    calls = []

    def flaky(path, frame):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full")
        real(path, frame)

    monkeypatch.setattr(ctc_results, "_write_tiff", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_ctc_result(target, np.full((3, 4, 4), 2, np.uint16), np.array([[2, 0, 2, 0]]), overwrite=True)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["01_RES"]
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        write_ctc_result(tmp_path / "02_RES", np.ones((3, 4, 4), np.uint16), np.array([[1, 0, 2, 0]]))
    assert [p.name for p in tmp_path.iterdir()] == ["01_RES"]


def _two_frames() -> np.ndarray:
    masks = np.zeros((2, 4, 4), dtype=np.uint16)
    masks[:, 0, 0] = 1
    return masks


@pytest.mark.parametrize(
    ("tracks", "message"),
    [
        ([[1, 0, 0, 0]], "track 1 (frames 0-0) appears in mask001.tif, outside its frames"),
        ([[1, 0, 1, 0], [2, 0, 1, 0]], "track 2 (frames 0-1) is missing from mask000.tif"),
        ([[2, 0, 1, 0]], "label 1 of mask000.tif is not in the table"),
        ([[1, 0, 1, 0], [1, 0, 1, 0]], "track 1 already defined"),
        ([[1, 0, 1, 0], [2, 1, 1, 1]], "parent 1 ends at frame 1, not before track 2 begins at 1"),
        ([[1, 0, 2, 0]], "track 1 ends at frame 2 but there are only 2 masks"),
        ([[1, 0, 1]], "expected integers (N, 4)"),
    ],
)
def test_invalid_results_are_refused_before_writing(tmp_path, tracks, message):
    with pytest.raises(UserInputError) as info:
        write_ctc_result(tmp_path / "01_RES", _two_frames(), np.array(tracks))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_labels_beyond_16_bits_are_refused(tmp_path):
    masks = np.full((1, 2, 2), 70000, dtype=np.int32)
    with pytest.raises(UserInputError, match="exceeds 65535"):
        write_ctc_result(tmp_path / "01_RES", masks, np.array([[70000, 0, 0, 0]]))


def test_read_errors_name_the_problem(tmp_path):
    with pytest.raises(UserInputError, match="result folder not found"):
        read_ctc_result(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="no maskNNN.tif files"):
        read_ctc_result(empty)
    folder = write_ctc_result(tmp_path / "01_RES", np.ones((3, 4, 4), np.uint16), np.array([[1, 0, 2, 0]]))
    (folder / "mask001.tif").unlink()
    with pytest.raises(UserInputError, match="frame 1 has no mask"):
        read_ctc_result(folder)
    folder = write_ctc_result(tmp_path / "02_RES", np.ones((2, 4, 4), np.uint16), np.array([[1, 0, 1, 0]]))
    (folder / "res_track.txt").write_text("1 0 0 0\n")
    with pytest.raises(UserInputError, match=r"track 1 \(frames 0-0\) appears in mask001.tif"):
        read_ctc_result(folder)
    (folder / "res_track.txt").unlink()
    with pytest.raises(UserInputError, match="res_track.txt: missing"):
        read_ctc_result(folder)
