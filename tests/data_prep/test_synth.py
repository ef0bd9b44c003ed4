"""The synthetic CTC generator: layout, determinism, track consistency (own check and py-ctcmetrics), GT/ST."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.filters import threshold_otsu

from celltune.data_prep.common import UserInputError
from celltune.data_prep.synth import SynthSpec, generate_dataset

DEFAULT = SynthSpec(name="Synth-2D")  # the CLI defaults: 2 sequences x 12 frames, 128x128, 8 cells, GT every 3rd


@pytest.fixture(scope="module")
def default_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), DEFAULT, show_progress=False)


@pytest.fixture(scope="module")
def volume_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = SynthSpec(name="Synth-3D", ndim=3, sequences=1, frames=5, size=64, depth=8, cells=5, gt_every=2)
    return generate_dataset(tmp_path_factory.mktemp("synth3d"), spec, show_progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_tracks(seq_gt: Path) -> list[tuple[int, int, int, int]]:
    lines = (seq_gt / "TRA" / "man_track.txt").read_text().splitlines()
    return [tuple(int(v) for v in line.split()) for line in lines]


def _touching(labels: np.ndarray) -> bool:
    """Two different cells share a face (4-/6-neighbourhood)."""
    for axis in range(labels.ndim):
        a, b = np.moveaxis(labels, axis, 0)[:-1], np.moveaxis(labels, axis, 0)[1:]
        if np.any((a != b) & (a > 0) & (b > 0)):
            return True
    return False


def _jaccards(gt: np.ndarray, other: np.ndarray) -> list[float]:
    """Per GT object: Jaccard with the `other` object covering most of it (0 if none)."""
    out = []
    for label in np.unique(gt[gt > 0]):
        ref = gt == label
        hits = other[ref]
        hits = hits[hits > 0]
        if hits.size == 0:
            out.append(0.0)
            continue
        match = other == np.bincount(hits).argmax()
        out.append(float((ref & match).sum() / (ref | match).sum()))
    return out


def test_same_seed_gives_identical_bytes_and_another_seed_differs(default_ds: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "a", DEFAULT, show_progress=False)
    assert _files(again) == _files(default_ds)
    other = generate_dataset(tmp_path / "b", DEFAULT.model_copy(update={"seed": 1}), show_progress=False)
    assert (other / "01" / "t000.tif").read_bytes() != (default_ds / "01" / "t000.tif").read_bytes()
    assert (other / "02" / "t011.tif").read_bytes() != (default_ds / "02" / "t011.tif").read_bytes()


def test_layout_matches_ctc_training_layout(default_ds: Path) -> None:
    expected = set()
    for seq in ("01", "02"):
        expected |= {f"{seq}/t{t:03d}.tif" for t in range(12)}
        expected |= {f"{seq}_GT/TRA/man_track{t:03d}.tif" for t in range(12)} | {f"{seq}_GT/TRA/man_track.txt"}
        expected |= {f"{seq}_GT/SEG/man_seg{t:03d}.tif" for t in (0, 3, 6, 9)}
        expected |= {f"{seq}_ST/SEG/man_seg{t:03d}.tif" for t in range(12)}
    assert set(_files(default_ds)) == expected
    assert not [p for p in default_ds.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    raw = tifffile.imread(default_ds / "01" / "t005.tif")
    assert raw.shape == (128, 128) and raw.dtype == np.uint8
    for sub in ("01_GT/SEG/man_seg003.tif", "01_GT/TRA/man_track005.tif", "02_ST/SEG/man_seg011.tif"):
        image = tifffile.imread(default_ds / sub)
        assert image.shape == (128, 128) and image.dtype == np.uint16


def _check_track_file(seq_gt: Path, frames: int) -> list[tuple[int, int, int, int]]:
    """Independent check of man_track.txt against the TRA masks (REFERENCE: validity of a track file)."""
    rows = _read_tracks(seq_gt)
    labels = [row[0] for row in rows]
    assert len(set(labels)) == len(labels)
    seen: dict[int, list[int]] = {}
    for t in range(frames):
        mask = tifffile.imread(seq_gt / "TRA" / f"man_track{t:03d}.tif")
        for label in np.unique(mask[mask > 0]):
            seen.setdefault(int(label), []).append(t)
    assert set(seen) == set(labels)
    by_label = {row[0]: row for row in rows}
    for label, begin, end, parent in rows:
        assert 0 <= begin <= end < frames
        assert seen[label] == list(range(begin, end + 1)), f"track {label}"
        if parent:
            assert by_label[parent][2] == begin - 1, f"parent {parent} of {label} must end the frame before"
    daughters: dict[int, list[int]] = {}
    for label, _, _, parent in rows:
        if parent:
            daughters.setdefault(parent, []).append(label)
    assert all(len(kids) == 2 for kids in daughters.values())
    assert all(by_label[a][1] == by_label[b][1] for a, b in daughters.values())
    return rows


@pytest.mark.parametrize("seq", ["01", "02"])
def test_track_file_matches_tra_masks_with_a_division(default_ds: Path, seq: str) -> None:
    rows = _check_track_file(default_ds / f"{seq}_GT", frames=12)
    assert any(parent for *_, parent in rows), "default spec should divide at least one cell"
    assert any(begin == 0 for _, begin, _, _ in rows) and max(end for _, _, end, _ in rows) == 11


def test_track_file_consistent_in_3d(volume_ds: Path) -> None:
    _check_track_file(volume_ds / "01_GT", frames=5)


def _as_result(seq_gt: Path, dest: Path) -> Path:
    res = dest / "Synth" / "01_RES"
    res.mkdir(parents=True)
    for mask in sorted((seq_gt / "TRA").glob("man_track*.tif")):
        shutil.copy(mask, res / mask.name.replace("man_track", "mask"))
    shutil.copy(seq_gt / "TRA" / "man_track.txt", res / "res_track.txt")
    return res


def test_tra_is_a_valid_ctc_result_for_py_ctcmetrics(default_ds: Path, tmp_path: Path) -> None:
    from ctc_metrics.scripts.validate import validate_sequence

    res = _as_result(default_ds / "02_GT", tmp_path)
    assert validate_sequence(str(res), threads=1) == {"Valid": 1}
    # The same check fails once the track file disagrees with the masks (it can fail).
    rows = _read_tracks(default_ds / "02_GT")
    label, begin, end, parent = rows[0]
    rows[0] = (label, begin, end + 1 if end < 11 else end - 1, parent)
    (res / "res_track.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in rows))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert validate_sequence(str(res), threads=1) == {"Valid": 0}


def test_gt_instances_each_hold_one_tra_marker(default_ds: Path) -> None:
    for t in (0, 3, 6, 9):
        gt = tifffile.imread(default_ds / "01_GT" / "SEG" / f"man_seg{t:03d}.tif")
        tra = tifffile.imread(default_ds / "01_GT" / "TRA" / f"man_track{t:03d}.tif")
        ids = np.unique(gt[gt > 0])
        assert list(ids) == list(range(1, len(ids) + 1))  # per-frame instance numbering
        assert len(ids) == len(np.unique(tra[tra > 0]))  # every cell annotated by default
        for i in ids:
            markers = np.unique(tra[gt == i])
            assert len(markers[markers > 0]) == 1
        assert np.all(gt[tra > 0] > 0)  # markers lie inside the cells


def test_silver_truth_close_to_gt_but_not_identical(default_ds: Path) -> None:
    scores, differs = [], False
    for seq in ("01", "02"):
        for t in (0, 3, 6, 9):
            gt = tifffile.imread(default_ds / f"{seq}_GT" / "SEG" / f"man_seg{t:03d}.tif")
            st = tifffile.imread(default_ds / f"{seq}_ST" / "SEG" / f"man_seg{t:03d}.tif")
            scores += _jaccards(gt, st)
            differs |= bool(np.any((gt > 0) != (st > 0)))
    assert min(scores) > 0.5 and np.mean(scores) > 0.8
    assert differs


def test_default_spec_has_touching_cells_in_every_sequence(default_ds: Path) -> None:
    for seq in ("01", "02"):
        frames = [tifffile.imread(default_ds / f"{seq}_GT" / "SEG" / f"man_seg{t:03d}.tif") for t in (0, 3, 6, 9)]
        assert any(_touching(f) for f in frames), seq


def test_raw_cells_stand_out_from_background(default_ds: Path) -> None:
    """A global Otsu threshold recovers most of the foreground, so a small network has something to learn."""
    for t in (0, 9):
        raw = tifffile.imread(default_ds / "01" / f"t{t:03d}.tif").astype(np.float32)
        fg = tifffile.imread(default_ds / "01_GT" / "SEG" / f"man_seg{t:03d}.tif") > 0
        guess = raw > threshold_otsu(raw)
        assert (guess & fg).sum() / (guess | fg).sum() > 0.75
        assert raw[fg].mean() > 2.5 * raw[~fg].mean()


def test_3d_volumes_and_full_gt(volume_ds: Path) -> None:
    raw = tifffile.imread(volume_ds / "01" / "t004.tif")
    assert raw.shape == (8, 64, 64) and raw.dtype == np.uint8
    assert tifffile.imread(volume_ds / "01_GT" / "TRA" / "man_track004.tif").shape == (8, 64, 64)
    assert sorted(p.name for p in (volume_ds / "01_GT" / "SEG").iterdir()) == [
        "man_seg000.tif", "man_seg002.tif", "man_seg004.tif"]
    gt = tifffile.imread(volume_ds / "01_GT" / "SEG" / "man_seg002.tif")
    assert gt.shape == (8, 64, 64)
    assert np.mean(_jaccards(gt, tifffile.imread(volume_ds / "01_ST" / "SEG" / "man_seg002.tif"))) > 0.75


def test_3d_gt_slices_and_uint16(tmp_path: Path) -> None:
    spec = SynthSpec(name="Slices", ndim=3, sequences=1, frames=4, size=64, depth=8, cells=5, gt_every=2,
                     gt_slices=True, dtype="uint16")
    ds = generate_dataset(tmp_path, spec, show_progress=False)
    raw = tifffile.imread(ds / "01" / "t000.tif")
    assert raw.shape == (8, 64, 64) and raw.dtype == np.uint16
    assert 255 < int(raw.max()) <= 4095  # 12-bit values
    names = sorted(p.name for p in (ds / "01_GT" / "SEG").iterdir())
    assert [n[:11] for n in names] == ["man_seg_000", "man_seg_002"] and all(len(n) == 19 for n in names)
    for name in names:
        t, z = int(name[8:11]), int(name[12:15])
        piece = tifffile.imread(ds / "01_GT" / "SEG" / name)
        assert piece.shape == (64, 64) and piece.dtype == np.uint16 and piece.max() > 0
        st = tifffile.imread(ds / "01_ST" / "SEG" / f"man_seg{t:03d}.tif")
        assert st.shape == (8, 64, 64)
        assert np.mean(_jaccards(piece, st[z])) > 0.7  # the slice is slice z of frame t


def test_quirks_size_jitter_and_partial_gt(tmp_path: Path) -> None:
    spec = SynthSpec(name="Quirks", frames=4, gt_every=1, size_jitter=0.2, gt_fraction=0.5, cells=10, seed=3)
    ds = generate_dataset(tmp_path, spec, show_progress=False)
    assert tifffile.imread(ds / "01" / "t000.tif").shape == (128, 128)
    second = tifffile.imread(ds / "02" / "t000.tif").shape
    assert second != (128, 128) and all(102 <= n <= 154 for n in second)
    assert tifffile.imread(ds / "02_GT" / "TRA" / "man_track000.tif").shape == second
    fewer = 0
    for t in range(4):
        gt = tifffile.imread(ds / "01_GT" / "SEG" / f"man_seg{t:03d}.tif")
        tra = tifffile.imread(ds / "01_GT" / "TRA" / f"man_track{t:03d}.tif")
        annotated, cells = len(np.unique(gt[gt > 0])), len(np.unique(tra[tra > 0]))
        assert 1 <= annotated <= cells
        fewer += annotated < cells
    assert fewer > 0


def test_existing_target_refused_unless_overwrite(default_ds: Path, tmp_path: Path) -> None:
    spec = SynthSpec(name="Again", sequences=1, frames=2)
    ds = generate_dataset(tmp_path, spec, show_progress=False)
    (ds / "stale.txt").write_text("x")
    with pytest.raises(UserInputError, match="already exists"):
        generate_dataset(tmp_path, spec, show_progress=False)
    assert (ds / "stale.txt").exists()
    generate_dataset(tmp_path, spec, overwrite=True, show_progress=False)
    assert not (ds / "stale.txt").exists() and (ds / "01" / "t001.tif").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Again"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"frames": 1}, "frames"),
        ({"size": 0}, "size"),
        ({"cells": 0}, "cells"),
        ({"sequences": 0}, "sequences"),
        ({"dtype": "float32"}, "dtype"),
        ({"ndim": 4}, "ndim"),
        ({"gt_every": 0}, "gt_every"),
        ({"name": "../evil"}, "name"),
        ({"colour": "red"}, "colour"),
        ({"gt_slices": True}, "gt_slices"),
        ({"ndim": 3, "depth": 2}, "depth"),
        ({"cells": 5000}, "cells"),
        ({"radius": 60.0}, "radius"),
    ],
)
def test_bad_spec_is_a_one_line_user_error_naming_the_field(fields: dict, named: str) -> None:
    with pytest.raises(UserInputError) as info:
        SynthSpec(**fields)
    message = str(info.value)
    assert named in message and "\n" not in message


def test_long_sequences_use_four_digits() -> None:
    assert SynthSpec(frames=999).digits == 3
    assert SynthSpec(frames=1000).digits == 4
