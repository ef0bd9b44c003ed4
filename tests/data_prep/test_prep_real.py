"""All three real CTC datasets converted once per session and checked against the TIFFs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from celltune.data_prep import store_format as sf
from celltune.data_prep.index import frames_for, load_index, split_counts
from celltune.data_prep.info import describe_stores
from celltune.data_prep.prep import prep_datasets
from celltune.data_prep.reader import SequenceReader

pytestmark = [pytest.mark.real_data, pytest.mark.ray, pytest.mark.slow]

DATASETS = ("DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "Fluo-N2DH-SIM+")
SEQUENCES = [(ds, seq) for ds in DATASETS for seq in ("01", "02")]


def _names(folder: Path, prefix: str) -> list[int]:
    return sorted(int(p.stem[len(prefix):]) for p in folder.glob(f"{prefix}*.tif")) if folder.is_dir() else []


@pytest.mark.parametrize(("dataset", "seq"), SEQUENCES)
def test_frames_shapes_dtypes_and_annotations(real_out, ctc_data_dir: Path, dataset: str, seq: str) -> None:
    out, _ = real_out
    store, src = out / f"{dataset}.zarr", ctc_data_dir / dataset
    attrs = sf.sequence_attrs(store, seq)
    raw_files = sorted((src / seq).glob("t*.tif"))
    with tifffile.TiffFile(raw_files[0]) as tif:
        shape, dtype = tif.series[0].shape, tif.series[0].dtype
    assert attrs["num_frames"] == len(raw_files)
    assert tuple(attrs["frame_shape"]) == shape and attrs["dtype"] == dtype.name
    reader = SequenceReader(store, seq)
    for t in (0, len(raw_files) // 2, len(raw_files) - 1):
        np.testing.assert_array_equal(reader.frame("raw", t), tifffile.imread(raw_files[t]))
    ann = attrs["annotations"]
    assert ann["gt_seg"]["frames"] == _names(src / f"{seq}_GT" / "SEG", "man_seg")
    assert ann["tra"]["frames"] == _names(src / f"{seq}_GT" / "TRA", "man_track")
    st = _names(src / f"{seq}_ST" / "SEG", "man_seg")
    assert ann.get("st_seg", {}).get("frames", []) == st
    assert (dataset == "DIC-C2DH-HeLa") == bool(st)
    for kind, folder, prefix in (("st_seg", f"{seq}_ST/SEG", "man_seg"), ("tra", f"{seq}_GT/TRA", "man_track")):
        for t in ann.get(kind, {}).get("frames", [])[::40]:
            np.testing.assert_array_equal(reader.frame(kind, t), tifffile.imread(src / folder / f"{prefix}{t:03d}.tif"))
    table = np.loadtxt(src / f"{seq}_GT" / "TRA" / "man_track.txt", dtype=np.int64, ndmin=2)
    assert attrs["man_track"]["tracks"] == len(table)


@pytest.mark.parametrize(("dataset", "seq"), SEQUENCES)
def test_gt_labels_and_targets(real_out, ctc_data_dir: Path, dataset: str, seq: str) -> None:
    """Every GT SEG frame equals its TIFF; every GT cell pixel is cell or boundary in the tertiary map; every
    marker lies inside one cell and every cell has a marker; foreground and weights are consistent."""
    out, _ = real_out
    reader = SequenceReader(out / f"{dataset}.zarr", seq)
    seg = ctc_data_dir / dataset / f"{seq}_GT" / "SEG"
    frames = reader.annotated("gt_seg")["frames"]
    assert reader.annotated("gt/tertiary")["frames"] == frames
    for t in frames:
        labels = tifffile.imread(seg / f"man_seg{t:03d}.tif")
        stored = reader.frame("gt_seg", t)
        assert stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, labels)
        cells = labels > 0
        tert = reader.frame("gt/tertiary", t)
        assert np.isin(tert[cells], (1, 2)).all()
        assert not (tert == 2)[~cells].any()
        mask, marker = reader.frame("gt/mask", t), reader.frame("gt/marker", t).astype(bool)
        np.testing.assert_array_equal(mask, cells)
        assert not marker[~cells].any()
        blobs, n = ndimage.label(marker)
        owners = ndimage.labeled_comprehension(labels, blobs, np.arange(1, n + 1), lambda v: len(np.unique(v)), int, 0)
        assert (owners == 1).all()  # one cell per marker blob
        assert set(np.unique(labels[marker])) == set(np.unique(labels[cells]))  # every cell has a marker
        fg, weight = reader.frame("gt/fg", t), reader.frame("gt/weight", t)
        assert not fg[~cells].any() and fg.sum() > 0.8 * cells.sum()
        assert weight.dtype == np.float32 and (weight > 0).all()


@pytest.mark.parametrize(("dataset", "seq"), [("DIC-C2DH-HeLa", "01"), ("Fluo-N2DH-SIM+", "01")])  # uint8, uint16
def test_stats_over_whole_sequence(real_out, ctc_data_dir: Path, dataset: str, seq: str) -> None:
    out, _ = real_out
    stats = sf.sequence_attrs(out / f"{dataset}.zarr", seq)["stats"]
    raw = np.stack([tifffile.imread(p) for p in sorted((ctc_data_dir / dataset / seq).glob("t*.tif"))])
    p1, p99 = np.percentile(raw, [1, 99])
    assert stats["exact"] is True
    assert (stats["min"], stats["max"]) == (float(raw.min()), float(raw.max()))
    np.testing.assert_allclose([stats["p1"], stats["p99"], stats["mean"], stats["std"]],
                               [p1, p99, raw.mean(), raw.std()], rtol=1e-9)


def test_st_targets_on_dic(real_out, ctc_data_dir: Path) -> None:
    reader = SequenceReader(real_out[0] / "DIC-C2DH-HeLa.zarr", "02")
    assert reader.annotated("st/tertiary")["frames"] == list(range(84))
    for t in (0, 50, 83):
        labels = tifffile.imread(ctc_data_dir / "DIC-C2DH-HeLa" / "02_ST" / "SEG" / f"man_seg{t:03d}.tif")
        tert = reader.frame("st/tertiary", t)
        assert np.isin(tert[labels > 0], (1, 2)).all() and not (tert == 2)[labels == 0].any()


def test_random_crops_equal_tiff_crops(real_out, ctc_data_dir: Path) -> None:
    rng = np.random.default_rng(0)
    for dataset, seq in SEQUENCES:
        reader = SequenceReader(real_out[0] / f"{dataset}.zarr", seq)
        for _ in range(3):
            t = int(rng.integers(reader.num_frames))
            y, x = (int(rng.integers(n - 256 + 1)) for n in reader.frame_shape)
            frame = tifffile.imread(ctc_data_dir / dataset / seq / f"t{t:03d}.tif")
            np.testing.assert_array_equal(reader.crop("raw", t, y, x, 256, 256), frame[y:y + 256, x:x + 256])


def test_index_and_info(real_out) -> None:
    out, seconds = real_out
    index = load_index(out)
    assert index.num_rows == 84 * 2 + 92 * 2 + 65 + 150
    counts = split_counts(index)
    assert counts["gt"]["DIC-C2DH-HeLa"] == {"train": 16, "val": 2}  # 18 GT frames
    assert counts["gt"]["Fluo-N2DH-GOWT1"] == {"train": 45, "val": 5}  # 50
    assert counts["gt"]["Fluo-N2DH-SIM+"] == {"train": 193, "val": 22}  # 215
    assert counts["st"]["DIC-C2DH-HeLa"] == {"train": 151, "val": 17}  # 168 ST frames
    assert counts["gt+st"]["DIC-C2DH-HeLa"] == {"train": 150, "val": 18}  # ST frames without GT train
    assert counts["st"]["Fluo-N2DH-GOWT1"] == counts["gt"]["Fluo-N2DH-GOWT1"]  # no ST: GT fallback
    assert frames_for(index, "all-gt", "val").num_rows == 2 + 5 + 22
    text = describe_stores(out)
    for dataset in DATASETS:
        assert dataset in text
    assert "773x739" in text and "1024x1024" in text
    print(f"\nreal-data prep took {seconds:.1f} s")


def test_rerun_skips_up_to_date_stores(real_out, ctc_data_dir: Path) -> None:
    out, _ = real_out
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.zarr")}
    report = prep_datasets(ctc_data_dir, out, datasets=list(DATASETS), show_progress=False)
    assert sorted(report.skipped) == sorted(DATASETS) and report.converted == []
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.zarr")} == before
