"""`prep_datasets` on small synthetic CTC datasets: store content against the TIFFs, targets, NGFF metadata,
incremental re-runs, atomic replacement and the crop reader."""

from __future__ import annotations

import hashlib
import pickle
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


@pytest.fixture(scope="module")
def synth_src(tmp_path_factory) -> Path:
    """Syn-A: uint16, GT every 3rd frame, ST everywhere, sequences of different sizes.
    Syn-B: uint8, sparse GT (some cells unannotated), no ST."""
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    src = tmp_path_factory.mktemp("src")
    generate_dataset(src, SynthSpec(name="Syn-A", frames=9, size=80, cells=5, dtype="uint16", gt_every=3,
                                    size_jitter=0.3, seed=1), show_progress=False)
    generate_dataset(src, SynthSpec(name="Syn-B", frames=7, size=300, cells=6, dtype="uint8", gt_every=2,
                                    gt_fraction=0.6, seed=2), show_progress=False)
    for st in (src / "Syn-B").glob("0?_ST"):
        shutil.rmtree(st)
    return src


@pytest.fixture(scope="module")
def prepped(synth_src: Path, tmp_path_factory, ray_session) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("out")
    report = prep_datasets(synth_src, out, seed=3, show_progress=False)
    return out, report


def _tiff(path: Path) -> np.ndarray:
    return tifffile.imread(path)


def _zarr_array(store: Path, seq: str, name: str) -> np.ndarray:
    return zarr.open_array(zarr.storage.LocalStore(store), path=f"{seq}/{sf.array_path(name)}", mode="r")[:]


def test_report_and_layout(prepped, synth_src: Path) -> None:
    out, report = prepped
    assert sorted(report.converted) == ["Syn-A", "Syn-B"] and report.skipped == []
    assert sorted(p.name for p in out.iterdir()) == [".prep.lock", "Syn-A.zarr", "Syn-B.zarr", "index.parquet"]
    text = report.summary()
    assert "2 converted, 0 up to date" in text and "converted Syn-A/02: 9 frames" in text
    for name in ("Syn-A", "Syn-B"):
        attrs = sf.store_attrs(out / f"{name}.zarr")
        assert attrs["complete"] is True and attrs["dataset"] == name and attrs["ndim"] == 2
        assert attrs["sequences"] == ["01", "02"] and attrs["format_version"] == sf.FORMAT_VERSION


@pytest.mark.parametrize("dataset", ["Syn-A", "Syn-B"])
def test_store_matches_tiffs(prepped, synth_src: Path, dataset: str) -> None:
    out, _ = prepped
    store = out / f"{dataset}.zarr"
    ds = synth_src / dataset
    for seq in ("01", "02"):
        raw_files = sorted((ds / seq).glob("t*.tif"))
        raw = np.stack([_tiff(p) for p in raw_files])
        stored = _zarr_array(store, seq, "raw")  # plain zarr reads the store
        assert stored.dtype == raw.dtype and stored.shape == raw.shape
        np.testing.assert_array_equal(stored, raw)
        attrs = sf.sequence_attrs(store, seq)
        assert attrs["num_frames"] == len(raw_files) and attrs["frame_shape"] == list(raw.shape[1:])
        assert attrs["dtype"] == raw.dtype.name
        stats = attrs["stats"]
        assert stats["exact"] is True
        np.testing.assert_allclose([stats["min"], stats["max"], stats["p1"], stats["p99"], stats["mean"]],
                                   [raw.min(), raw.max(), *np.percentile(raw, [1, 99]), raw.mean()], rtol=1e-9)
        folders = {"gt_seg": (ds / f"{seq}_GT" / "SEG", "man_seg"), "st_seg": (ds / f"{seq}_ST" / "SEG", "man_seg"),
                   "tra": (ds / f"{seq}_GT" / "TRA", "man_track")}
        for kind, (folder, prefix) in folders.items():
            files = sorted(folder.glob(f"{prefix}*.tif")) if folder.is_dir() else []
            if not files:
                assert kind not in attrs["annotations"] and not (store / seq / "labels" / kind).exists()
                continue
            frames = [int(p.stem[len(prefix):]) for p in files]
            ann = attrs["annotations"][kind]
            assert ann["frames"] == frames and ann["dtype"] == "uint16"
            labels = _zarr_array(store, seq, kind)
            assert labels.dtype == np.uint16 and labels.shape == raw.shape
            for t, p in zip(frames, files, strict=True):
                truth = _tiff(p)
                np.testing.assert_array_equal(labels[t], truth)
                assert ann["cells"][frames.index(t)] == len(np.unique(truth[truth > 0]))
            others = [t for t in range(len(raw)) if t not in frames]
            assert not labels[others].any()  # unannotated frames read as 0
        table = np.loadtxt(ds / f"{seq}_GT" / "TRA" / "man_track.txt", dtype=np.int64, ndmin=2)
        np.testing.assert_array_equal(_zarr_array_plain(store, f"{seq}/man_track"), table)
        assert attrs["man_track"] == {"tracks": len(table)}
        provenance = {f["path"]: f for f in attrs["provenance"]["files"]}
        for path in [*raw_files, ds / f"{seq}_GT" / "TRA" / "man_track.txt"]:
            rel = path.relative_to(ds).as_posix()
            data = path.read_bytes()
            assert provenance[rel] == {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _zarr_array_plain(store: Path, path: str) -> np.ndarray:
    return zarr.open_array(zarr.storage.LocalStore(store), path=path, mode="r")[:]


def test_sequences_of_different_sizes(prepped) -> None:
    out, _ = prepped
    shapes = [tuple(sf.sequence_attrs(out / "Syn-A.zarr", s)["frame_shape"]) for s in ("01", "02")]
    assert shapes[0] == (80, 80) and shapes[1] != shapes[0]


def test_targets_are_those_of_targets_module(prepped, synth_src: Path) -> None:
    out, _ = prepped
    store = out / "Syn-A.zarr"
    params = targets.target_parameters("Syn-A", 2)
    attrs = sf.sequence_attrs(store, "02")
    assert attrs["targets"]["gt"]["params"] == params and attrs["targets"]["gt"]["frames"] == [0, 3, 6]
    reader = SequenceReader(store, "02")
    for source, t, path in [("gt", 3, synth_src / "Syn-A/02_GT/SEG/man_seg003.tif"),
                            ("st", 4, synth_src / "Syn-A/02_ST/SEG/man_seg004.tif")]:
        labels = _tiff(path)
        mask_marker = targets.mask_marker_target(labels, params["mask_marker"]["erosion"])
        fg, weight = targets.unet_weight_map(labels, w0=params["unet_weight"]["w0"],
                                             sigma=params["unet_weight"]["sigma"])
        expected = {"tertiary": targets.tertiary_target(labels), "mask": mask_marker[0],
                    "marker": mask_marker[1], "fg": fg, "weight": weight}
        for name, value in expected.items():
            got = reader.frame(f"{source}/{name}", t)
            assert got.dtype == value.dtype, name
            np.testing.assert_array_equal(got, value, err_msg=f"{source}/{name}")
    assert not reader.frame("gt/weight", 4).any()  # frame 4 has no GT: nothing written


def test_ngff_metadata(prepped) -> None:
    out, _ = prepped
    group = zarr.open_group(zarr.storage.LocalStore(out / "Syn-A.zarr"), path="01", mode="r")
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["t", "y", "x"]
    assert [a["type"] for a in multiscale["axes"]] == ["time", "space", "space"]
    path = multiscale["datasets"][0]["path"]
    assert group[path].shape == (9, 80, 80)
    assert group["labels"].attrs["ome"]["labels"] == ["gt_seg", "st_seg", "tra"]
    label = group["labels/gt_seg"].attrs["ome"]
    assert "image-label" in label and group["labels/gt_seg"][label["multiscales"][0]["datasets"][0]["path"]].ndim == 3
    assert list(group["raw"].metadata.dimension_names) == ["t", "y", "x"]


def test_no_st_falls_back_to_gt_in_the_index(prepped) -> None:
    out, _ = prepped
    index = load_index(out)
    assert index.num_rows == 9 + 9 + 7 + 7
    b = index.filter(np.array([d == "Syn-B" for d in index["dataset"].to_pylist()]))
    assert all(b["st_fallback"].to_pylist()) and all(b["gt_st_fallback"].to_pylist())
    assert b["split_st"].to_pylist() == b["split_gt"].to_pylist()
    st_train = frames_for(index, "st", "train", "Syn-B")
    assert set(st_train["source"].to_pylist()) == {"gt"} and all(st_train["has_gt_seg"].to_pylist())
    a_train = frames_for(index, "gt+st", "train", "Syn-A")
    assert set(a_train["source"].to_pylist()) == {"st"} and not any(a_train["has_gt_seg"].to_pylist())
    assert frames_for(index, "gt+st", "val", "Syn-A").num_rows == 6  # every GT frame of both sequences


def test_reader_crops(prepped) -> None:
    out, _ = prepped
    store = out / "Syn-B.zarr"
    reader = pickle.loads(pickle.dumps(SequenceReader(store, "01")))  # pickled before first use, as in DataLoader
    raw = _zarr_array(store, "01", "raw")
    tert = _zarr_array(store, "01", "gt/tertiary")
    rng = np.random.default_rng(0)
    cached = SequenceReader(store, "01", cache_bytes=1 << 24)
    for _ in range(40):
        t, y, x = int(rng.integers(7)), int(rng.integers(300 - 100)), int(rng.integers(300 - 120))
        np.testing.assert_array_equal(reader.crop("raw", t, y, x, 100, 120), raw[t, y:y + 100, x:x + 120])
        np.testing.assert_array_equal(reader.crop("gt/tertiary", t, y, x, 100, 120), tert[t, y:y + 100, x:x + 120])
        np.testing.assert_array_equal(cached.crop("raw", t, y, x, 100, 120), raw[t, y:y + 100, x:x + 120])
    crop = cached.crop("raw", 0, 0, 0, 10, 10)
    crop[:] = 0  # a crop is a copy: the cache is not changed through it
    np.testing.assert_array_equal(cached.crop("raw", 0, 0, 0, 10, 10), raw[0, :10, :10])
    assert reader.annotated("gt_seg")["frames"] == [0, 2, 4, 6]
    with pytest.raises(ValueError, match="outside the 300x300 frame"):
        reader.crop("raw", 0, 250, 0, 100, 100)
    with pytest.raises(ValueError, match="no array 'st_seg'"):
        reader.crop("st_seg", 0, 0, 0, 10, 10)
    with pytest.raises(ValueError, match="pass a z-slice"):
        reader.crop("raw", 0, 0, 0, 10, 10, z=0)


def test_reader_zarr_fallback(prepped, monkeypatch) -> None:
    """Arrays in another layout are read through zarr: same results."""
    from celltune.data_prep import reader as reader_mod

    out, _ = prepped
    monkeypatch.setattr(reader_mod.ShardLayout, "open", classmethod(lambda cls, path: None))
    reader = SequenceReader(out / "Syn-A.zarr", "01")
    raw = _zarr_array(out / "Syn-A.zarr", "01", "raw")
    np.testing.assert_array_equal(reader.crop("raw", 2, 5, 7, 30, 40), raw[2, 5:35, 7:47])
    assert isinstance(reader._arrays["raw"], reader_mod._ZarrArray)


def test_incremental_and_atomic_rebuild(synth_src: Path, tmp_path: Path, ray_session) -> None:
    src = tmp_path / "src"
    shutil.copytree(synth_src / "Syn-A", src / "Syn-A")
    shutil.copytree(synth_src / "Syn-B", src / "Syn-B")
    out = tmp_path / "out"
    first = prep_datasets(src, out, datasets=["Syn-A"], show_progress=False)
    assert first.converted == ["Syn-A"]
    created = sf.store_attrs(out / "Syn-A.zarr")["fingerprint"]
    marker = out / "Syn-A.zarr" / "01" / "raw" / "zarr.json"
    inode = marker.stat().st_ino

    again = prep_datasets(src, out, show_progress=False)  # Syn-A up to date, Syn-B new
    assert again.skipped == ["Syn-A"] and again.converted == ["Syn-B"]
    assert marker.stat().st_ino == inode
    assert load_index(out).num_rows == 9 + 9 + 7 + 7

    # Change one source file: only that dataset is rebuilt, and its fingerprint changes.
    label = src / "Syn-A/02_GT/SEG/man_seg003.tif"
    labels = _tiff(label)
    labels[labels == labels.max()] = 0
    tifffile.imwrite(label, labels)
    third = prep_datasets(src, out, show_progress=False)
    assert third.converted == ["Syn-A"] and third.skipped == ["Syn-B"]
    assert sf.store_attrs(out / "Syn-A.zarr")["fingerprint"] != created
    np.testing.assert_array_equal(SequenceReader(out / "Syn-A.zarr", "02").frame("gt_seg", 3), labels)

    # force rebuilds; leftovers of an interrupted run are removed and never listed as stores.
    leftover = out / f"{sf.tmp_prefix('Syn-B')}dead"
    zarr.create_group(zarr.storage.LocalStore(leftover), attributes={"celltune": {"kind": sf.STORE_KIND}})
    forced = prep_datasets(src, out, datasets=["Syn-B"], force=True, show_progress=False)
    assert forced.converted == ["Syn-B"] and not leftover.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".Syn")]


def test_incomplete_store_is_rebuilt(synth_src: Path, tmp_path: Path, ray_session) -> None:
    out = tmp_path / "out"
    prep_datasets(synth_src, out, datasets=["Syn-B"], show_progress=False)
    group = zarr.open_group(zarr.storage.LocalStore(out / "Syn-B.zarr"), mode="r+")
    attrs = dict(group.attrs["celltune"])
    attrs["complete"] = False  # what a store would look like if it had been moved into place too early
    group.update_attributes({"celltune": attrs})
    assert not sf.is_complete_store(out / "Syn-B.zarr") and list(sf.iter_stores(out)) == []
    with pytest.raises(ValueError, match="not a complete celltune store"):
        SequenceReader(out / "Syn-B.zarr", "01").crop("raw", 0, 0, 0, 8, 8)
    report = prep_datasets(synth_src, out, datasets=["Syn-B"], show_progress=False)
    assert report.converted == ["Syn-B"] and sf.is_complete_store(out / "Syn-B.zarr")


def test_wide_label_ids_are_stored_as_uint32(synth_src: Path, tmp_path: Path, ray_session) -> None:
    src = tmp_path / "src"
    shutil.copytree(synth_src / "Syn-B", src / "Syn-B")
    wide = _tiff(src / "Syn-B/01_GT/SEG/man_seg002.tif").astype(np.uint32)
    wide[wide == wide.max()] = 70_000
    tifffile.imwrite(src / "Syn-B/01_GT/SEG/man_seg002.tif", wide)
    narrow = _tiff(src / "Syn-B/02_GT/SEG/man_seg004.tif").astype(np.int32)  # 32-bit file, small ids
    tifffile.imwrite(src / "Syn-B/02_GT/SEG/man_seg004.tif", narrow)
    out = tmp_path / "out"
    prep_datasets(src, out, show_progress=False)
    store = out / "Syn-B.zarr"
    gt1 = _zarr_array(store, "01", "gt_seg")
    assert gt1.dtype == np.uint32 and sf.sequence_attrs(store, "01")["annotations"]["gt_seg"]["dtype"] == "uint32"
    np.testing.assert_array_equal(gt1[2], wide)
    np.testing.assert_array_equal(gt1[4], _tiff(src / "Syn-B/01_GT/SEG/man_seg004.tif"))
    assert SequenceReader(store, "01").crop("gt_seg", 2, 0, 0, 300, 300).max() == 70_000
    gt2 = _zarr_array(store, "02", "gt_seg")
    assert gt2.dtype == np.uint16
    np.testing.assert_array_equal(gt2[4], narrow)
