"""The 3D path on synthetic (T, Z, Y, X) data: slice-annotated GT (man_seg_TTT_ZZZ.tif) and full GT volumes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from celltune.data_prep import store_format as sf
from celltune.data_prep import targets
from celltune.data_prep.index import frames_for, load_index
from celltune.data_prep.prep import prep_datasets
from celltune.data_prep.reader import SequenceReader

pytestmark = pytest.mark.ray

SLICES, VOLUMES = "Syn-3D-slices", "Syn-3D-volumes"
T, Z, SIZE = 5, 6, 48


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("src3d")
    common = {"ndim": 3, "frames": T, "size": SIZE, "depth": Z, "cells": 3, "gt_every": 2, "seed": 5}
    generate_dataset(root, SynthSpec(name=VOLUMES, **common), show_progress=False)
    generate_dataset(root, SynthSpec(name=SLICES, gt_slices=True, **common), show_progress=False)
    # A second annotated slice of frame 2 in sequence 01 (same cells: the generator is seeded the same way).
    (first,) = sorted((root / SLICES / "01_GT" / "SEG").glob("man_seg_002_*.tif"))
    z_first = int(first.stem.split("_")[-1])
    volume = tifffile.imread(root / VOLUMES / "01_GT" / "SEG" / "man_seg002.tif")
    np.testing.assert_array_equal(volume[z_first], tifffile.imread(first))
    z_extra = (z_first + 3) % Z
    tifffile.imwrite(root / SLICES / "01_GT" / "SEG" / f"man_seg_002_{z_extra:03d}.tif", volume[z_extra])
    return root


@pytest.fixture(scope="module")
def out(src: Path, tmp_path_factory, ray_session) -> Path:
    out = tmp_path_factory.mktemp("out3d")
    prep_datasets(src, out, show_progress=False)
    return out


def _array(store: Path, seq: str, name: str) -> np.ndarray:
    return zarr.open_array(zarr.storage.LocalStore(store), path=f"{seq}/{sf.array_path(name)}", mode="r")[:]


def _slice_files(src: Path, seq: str) -> list[tuple[int, int, Path]]:
    files = sorted((src / SLICES / f"{seq}_GT" / "SEG").glob("man_seg_*.tif"))
    return [(int(p.stem.split("_")[2]), int(p.stem.split("_")[3]), p) for p in files]


def _expected_targets(labels: np.ndarray, params: dict) -> dict[str, np.ndarray]:
    mm = targets.mask_marker_target(labels, params["mask_marker"]["erosion"])
    fg, weight = targets.unet_weight_map(labels)
    return {"tertiary": targets.tertiary_target(labels), "mask": mm[0], "marker": mm[1], "fg": fg, "weight": weight}


def test_raw_and_metadata_are_4d(out: Path, src: Path) -> None:
    for name in (SLICES, VOLUMES):
        store = out / f"{name}.zarr"
        assert sf.store_attrs(store)["ndim"] == 3
        raw = _array(store, "01", "raw")
        truth = np.stack([tifffile.imread(src / name / "01" / f"t{t:03d}.tif") for t in range(T)])
        assert raw.shape == (T, Z, SIZE, SIZE) and truth.shape == raw.shape
        np.testing.assert_array_equal(raw, truth)
        group = zarr.open_group(zarr.storage.LocalStore(store), path="01", mode="r")
        axes = group.attrs["ome"]["multiscales"][0]["axes"]
        assert [a["name"] for a in axes] == ["t", "z", "y", "x"]
        assert list(group["raw"].metadata.dimension_names) == ["t", "z", "y", "x"]
        assert group["raw"].chunks == (1, 1, SIZE, SIZE)


def test_slice_annotations(out: Path, src: Path) -> None:
    store = out / f"{SLICES}.zarr"
    params_2d = targets.target_parameters(SLICES, 2)
    for seq in ("01", "02"):
        files = _slice_files(src, seq)
        attrs = sf.sequence_attrs(store, seq)
        ann = attrs["annotations"]["gt_seg"]
        assert ann["frames"] == [] and ann["slices"] == [[t, z] for t, z, _ in files]
        assert attrs["targets"]["gt"]["slices"] == ann["slices"] and attrs["targets"]["gt"]["params_2d"] == params_2d
        gt = _array(store, seq, "gt_seg")
        tert = _array(store, seq, "gt/tertiary")
        written = np.zeros(gt.shape, bool)
        for t, z, path in files:
            labels = tifffile.imread(path)
            np.testing.assert_array_equal(gt[t, z], labels)
            assert ann["slice_cells"][ann["slices"].index([t, z])] == len(np.unique(labels[labels > 0]))
            expected = _expected_targets(labels, params_2d)  # slices get 2D targets
            for name, value in expected.items():
                np.testing.assert_array_equal(_array(store, seq, f"gt/{name}")[t, z], value, err_msg=name)
            written[t, z] = True
        assert not gt[~written].any() and not tert[~written].any()
    assert len(_slice_files(src, "01")) == len(_slice_files(src, "02")) + 1  # the extra slice of frame 2


def test_full_volumes_get_3d_targets(out: Path, src: Path) -> None:
    store = out / f"{VOLUMES}.zarr"
    params_3d = targets.target_parameters(VOLUMES, 3)
    assert params_3d["tertiary"]["dilation_iterations"] == 5
    attrs = sf.sequence_attrs(store, "01")
    ann = attrs["annotations"]["gt_seg"]
    assert ann["frames"] == [0, 2, 4] and ann["slices"] == []
    assert attrs["targets"]["gt"]["params"] == params_3d
    volume = tifffile.imread(src / VOLUMES / "01_GT" / "SEG" / "man_seg002.tif")
    assert ann["cells_per_z"][1] == [len(np.unique(s[s > 0])) for s in volume]
    for name, value in _expected_targets(volume, params_3d).items():
        np.testing.assert_array_equal(_array(store, "01", f"gt/{name}")[2], value, err_msg=name)
    st = tifffile.imread(src / VOLUMES / "01_ST" / "SEG" / "man_seg003.tif")
    np.testing.assert_array_equal(_array(store, "01", "st/tertiary")[3], targets.tertiary_target(st))
    tra = _array(store, "01", "tra")
    np.testing.assert_array_equal(tra[4], tifffile.imread(src / VOLUMES / "01_GT" / "TRA" / "man_track004.tif"))


def test_index_has_one_row_per_slice(out: Path, src: Path) -> None:
    index = load_index(out)
    assert index.num_rows == 2 * 2 * T * Z
    rows = [r for r in index.to_pylist() if r["dataset"] == SLICES]
    annotated = {(seq, t, z) for seq in ("01", "02") for t, z, _ in _slice_files(src, seq)}
    assert {(r["sequence"], r["t"], r["z"]) for r in rows if r["has_gt_seg"]} == annotated
    assert all(r["gt_slice"] == r["has_gt_seg"] for r in rows)
    assert all(r["shape"] == [Z, SIZE, SIZE] and r["ndim"] == 3 for r in rows)
    # Slices of one frame share the frame's split (no leakage between slices of a volume).
    by_frame: dict[tuple[str, int], set] = {}
    for r in rows:
        if r["split_gt"] is not None:
            by_frame.setdefault((r["sequence"], r["t"]), set()).add(r["split_gt"])
    assert all(len(v) == 1 for v in by_frame.values()) and len(by_frame) == 6  # frames 0, 2, 4 of both
    assert sorted(v.pop() for v in by_frame.values()).count("val") == 1  # round(0.1 * 6) = 1 frame
    volume_rows = [r for r in index.to_pylist() if r["dataset"] == VOLUMES and r["has_gt_seg"]]
    assert len(volume_rows) == (3 + 3) * Z and not any(r["gt_slice"] for r in volume_rows)
    val = frames_for(index, "gt+st", "val", SLICES)
    assert {(r["sequence"], r["t"], r["z"]) for r in val.to_pylist()} == annotated


def test_reader_crops_a_slice(out: Path) -> None:
    store = out / f"{SLICES}.zarr"
    reader = SequenceReader(store, "02", cache_bytes=1 << 22)
    plain = SequenceReader(store, "02")
    raw = _array(store, "02", "raw")
    for t, z in [(0, 0), (3, 5), (4, 2)]:
        np.testing.assert_array_equal(plain.crop("raw", t, z=z, y0=4, x0=9, h=30, w=20), raw[t, z, 4:34, 9:29])
        np.testing.assert_array_equal(reader.crop("raw", t, z=z, y0=4, x0=9, h=30, w=20), raw[t, z, 4:34, 9:29])
    with pytest.raises(ValueError, match="pass a z-slice"):
        plain.crop("raw", 0, 0, 0, 8, 8)
    assert plain.annotated("gt/tertiary")["slices"] == sf.sequence_attrs(store, "02")["annotations"]["gt_seg"]["slices"]


def test_slice_outside_the_volume_is_rejected(src: Path, tmp_path: Path, ray_session) -> None:
    from celltune.data_prep.common import UserInputError

    bad = tmp_path / "src"
    shutil.copytree(src / SLICES, bad / SLICES)
    tifffile.imwrite(bad / SLICES / "02_GT" / "SEG" / "man_seg_001_009.tif", np.zeros((SIZE, SIZE), np.uint16))
    with pytest.raises(UserInputError, match=f"{SLICES}/02_GT/SEG/man_seg_001_009.tif: slice z=9 outside raw frame "
                                             f"t001.tif \\(depth {Z}\\)"):
        prep_datasets(bad, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()  # made by the failed run, so removed with everything in it
