"""Building blocks of data prep without Ray: shards, stats, track table, layout discovery, TIFF checks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from celltune.data_prep import shards, tracks
from celltune.data_prep import store_format as sf
from celltune.data_prep.common import UserInputError
from celltune.data_prep.ctc_layout import discover
from celltune.data_prep.stats import IntensityStats
from celltune.data_prep.tiff_io import check_labels, decode_tiff

# ------------------------------------------------------------------------------------------------ shards


@pytest.mark.parametrize(
    ("frame_shape", "dtype", "role"),
    [
        ((300, 517), np.uint16, shards.RAW_CODEC),  # edge chunks on both axes
        ((256, 512), np.uint8, shards.RAW_CODEC),  # exact multiple of the chunk
        ((100, 60), np.uint8, shards.LABEL_CODEC),  # smaller than one chunk
        ((5, 300, 270), np.uint32, shards.LABEL_CODEC),  # 3D
        ((270, 300), np.float32, shards.LABEL_CODEC),
    ],
)
def test_shard_writer_matches_zarr_and_reader(tmp_path: Path, frame_shape, dtype, role) -> None:
    rng = np.random.default_rng(0)
    zarr.create_group(zarr.storage.LocalStore(tmp_path))
    array_dir = shards.create_frame_array(tmp_path, "a", frame_shape, 4, dtype, role)
    writer = shards.ShardWriter(array_dir)
    data = np.zeros((4, *frame_shape), dtype)
    for t in (0, 1, 3):  # frame 2 is never written
        frame = (rng.random(frame_shape) * 200).astype(dtype)
        if t == 3:
            frame[..., :256] = 0  # whole chunks equal to the fill value
        data[t] = frame
        writer.write_frame(t, frame)
    # zarr itself reads what we wrote: the shards follow the zarr v3 sharding spec.
    np.testing.assert_array_equal(zarr.open_array(zarr.storage.LocalStore(tmp_path), path="a")[:], data)
    assert not writer.layout.shard_file(2).exists()
    reader = shards.ShardReader(shards.ShardLayout.open(array_dir))
    for _ in range(60):
        t = int(rng.integers(4))
        box = []
        for n in frame_shape:
            start = int(rng.integers(n))
            box.append(slice(start, int(rng.integers(start + 1, n + 1))))
        np.testing.assert_array_equal(reader.read(t, tuple(box)), data[(t, *box)])


def test_shard_writer_skips_empty_chunks_and_frames(tmp_path: Path) -> None:
    zarr.create_group(zarr.storage.LocalStore(tmp_path))
    writer = shards.ShardWriter(shards.create_frame_array(tmp_path, "a", (512, 512), 2, np.uint16,
                                                          shards.LABEL_CODEC))
    frame = np.zeros((512, 512), np.uint16)
    assert writer.write_frame(0, frame) == 0
    assert not writer.layout.shard_file(0).exists()
    frame[300, 300] = 7  # one chunk of four holds data
    writer.write_frame(1, frame)
    blob = writer.layout.shard_file(1).read_bytes()
    index = np.frombuffer(blob[-4 - 4 * 16:-4], "<u8").reshape(4, 2)
    assert (index[[0, 1, 2], 0] == shards.MAX_UINT64).all()
    assert index[3, 0] == 0 and index[3, 1] == len(blob) - 4 - 64


def test_shard_reader_rejects_a_damaged_index(tmp_path: Path) -> None:
    zarr.create_group(zarr.storage.LocalStore(tmp_path))
    writer = shards.ShardWriter(shards.create_frame_array(tmp_path, "a", (64, 64), 1, np.uint8, shards.RAW_CODEC))
    writer.write_frame(0, np.ones((64, 64), np.uint8))
    path = writer.layout.shard_file(0)
    blob = bytearray(path.read_bytes())
    blob[-6] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="checksum"):
        shards.ShardReader(writer.layout).read(0, (slice(0, 8), slice(0, 8)))


def test_array_names_and_paths() -> None:
    assert sf.array_path("raw") == "raw"
    assert sf.array_path("gt_seg") == "labels/gt_seg/0"
    assert sf.array_path("st/weight") == "targets/st/weight"
    assert len(sf.ARRAY_NAMES) == 4 + 2 * 5
    with pytest.raises(ValueError, match="unknown array name"):
        sf.array_path("gt/nonsense")
    assert sf.chunk_shape((5, 100, 700)) == (1, 1, 100, 256)
    assert sf.shard_shape((5, 100, 700)) == (1, 5, 100, 768)


# ------------------------------------------------------------------------------------------------ stats


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.int32])
def test_stats_equal_numpy_over_the_whole_sequence(dtype) -> None:
    rng = np.random.default_rng(1)
    frames = [np.clip(rng.normal(120, 40, (37, 51)), 0, None).astype(dtype) for _ in range(5)]
    acc = IntensityStats(np.dtype(dtype))
    for frame in frames:
        acc.add(frame)
    got = acc.result()
    data = np.stack(frames).astype(np.float64)
    assert got["exact"] is (np.dtype(dtype).itemsize <= 2)
    np.testing.assert_allclose([got["min"], got["max"], got["p1"], got["p99"], got["mean"], got["std"]],
                               [data.min(), data.max(), *np.percentile(data, [1, 99]), data.mean(), data.std()],
                               rtol=1e-9)


def test_stats_percentiles_by_hand() -> None:
    acc = IntensityStats(np.dtype(np.uint8))
    acc.add(np.arange(101, dtype=np.uint8).reshape(1, 101))  # 0..100: p1 = 1, p99 = 99
    acc.add(np.full((1, 1), 100, np.uint8))  # 102 values: p1 at position 1.01 -> 1.01
    got = acc.result()
    assert got["p1"] == pytest.approx(1.01)
    assert got["p99"] == pytest.approx(np.percentile(np.r_[np.arange(101), 100], 99))
    assert (got["min"], got["max"]) == (0.0, 100.0)


# ------------------------------------------------------------------------------------------------ tracks


def test_man_track_parse_and_rules() -> None:
    table = tracks.parse_man_track("1 0 4 0\n2 5 9 1\n3 5 9 1\n\n", "T/man_track.txt")
    np.testing.assert_array_equal(table, [[1, 0, 4, 0], [2, 5, 9, 1], [3, 5, 9, 1]])
    bad = {
        "1 0 4\n": "line 1 '1 0 4': expected four integers",
        "1 5 4 0\n": "track 1 begins (B=5) after it ends (E=4)",
        "1 0 4 0\n1 5 6 0\n": "line 2: track 1 already defined on line 1",
        "1 0 4 0\n2 3 9 1\n": "parent 1 ends at frame 4, not before track 2 begins at 3",
        "2 3 9 7\n": "parent 7 of track 2 is not a track",
        "1 0 4 0\n2 5 9 2\n": "line 2: track 2 names itself as its parent",
        "1 0 99999999999999999999 0\n": "line 1 '1 0 99999999999999999999 0': number too large",
        "1 0 4 0\n2 5 10 1\n": "line 2: track 2 ends at frame 10, past the last frame 9",
    }
    for text, message in bad.items():
        with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            tracks.parse_man_track(text, "T/man_track.txt", num_frames=10)


def test_man_track_against_masks() -> None:
    table = np.array([[1, 0, 2, 0], [2, 1, 2, 0]])
    names = {0: "m0.tif", 1: "m1.tif", 2: "m2.tif"}
    ok = {0: np.array([1]), 1: np.array([1, 2]), 2: np.array([1, 2])}
    tracks.check_against_masks(table, ok, "T.txt", names)
    tracks.check_against_masks(table, {1: ok[1]}, "T.txt", names)  # TRA covering only a frame range
    with pytest.raises(UserInputError, match=r"T.txt: track 2 \(frames 1-2\) is missing from m2.tif"):
        tracks.check_against_masks(table, {**ok, 2: np.array([1])}, "T.txt", names)
    with pytest.raises(UserInputError, match=r"track 2 \(frames 1-2\) appears in m0.tif, outside its frames"):
        tracks.check_against_masks(table, {**ok, 0: np.array([1, 2])}, "T.txt", names)
    with pytest.raises(UserInputError, match="label 5 of m1.tif is not in the table"):
        tracks.check_against_masks(table, {**ok, 1: np.array([1, 2, 5])}, "T.txt", names)


# ------------------------------------------------------------------------------------------------ layout


def _touch_tiff(path: Path, shape=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros(shape, np.uint8))


def test_discover_layout(tmp_path: Path) -> None:
    ds = tmp_path / "DS"
    for t in range(3):
        _touch_tiff(ds / "01" / f"t{t:03d}.tif")
    for t in range(12):
        _touch_tiff(ds / "02" / f"t{t:04d}.tif")
    _touch_tiff(ds / "01_GT" / "SEG" / "man_seg001.tif")
    _touch_tiff(ds / "01_GT" / "SEG" / "man_seg_002_005.tif")
    _touch_tiff(ds / "01_GT" / "TRA" / "man_track001.tif")
    (ds / "01_GT" / "TRA" / "man_track.txt").write_text("1 1 1 0\n")
    _touch_tiff(ds / "01_GT" / "SEG" / "notes.tif")  # ignored with a warning
    (tmp_path / "not-a-dataset").mkdir()
    (layout,) = discover(tmp_path)
    one, two = layout.sequences
    assert (one.sequence, len(one.raw), one.digits) == ("01", 3, 3)
    assert (two.sequence, len(two.raw), two.digits) == ("02", 12, 4)
    assert [(f.t, f.z) for f in one.gt_seg] == [(1, None), (2, 5)]
    assert [f.t for f in one.tra] == [1] and one.man_track is not None
    assert two.gt_seg == () and two.st_seg == () and two.man_track is None
    assert one.rel(one.raw[0]) == "DS/01/t000.tif"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda ds: _touch_tiff(ds / "01" / "t001.tif"),
         "DS/01: raw frames not contiguous from t000: t000.tif missing"),
        (lambda ds: (ds / "01").mkdir(parents=True), "DS/01: no raw frames"),
        (lambda ds: (_touch_tiff(ds / "01" / "t000.tif"), _touch_tiff(ds / "01_GT" / "SEG" / "man_seg003.tif")),
         "DS/01_GT/SEG/man_seg003.tif: no raw frame t003"),
        (lambda ds: (_touch_tiff(ds / "01" / "t000.tif"), _touch_tiff(ds / "01_GT" / "TRA" / "man_track000.tif")),
         "DS/01_GT/TRA/man_track.txt: missing"),
        (lambda ds: _touch_tiff(ds / "02_GT" / "SEG" / "man_seg000.tif"),
         r"DS/02: raw folder missing \(02_GT exists\)"),
        (lambda ds: (_touch_tiff(ds / "01" / "t000.tif"), (ds / "01" / "t001.tif").symlink_to("t001.tif")),
         r"DS/01/t001.tif: cannot read file \(Too many levels of symbolic links\)"),
        (lambda ds: (_touch_tiff(ds / "01" / "t000.tif"), (ds / "01" / "t001.tif").mkdir()),
         "DS/01/t001.tif: not a regular file"),
        (lambda ds: (_touch_tiff(ds / "01" / "t000.tif"), (ds / "01_GT" / "TRA").mkdir(parents=True),
                     (ds / "01_GT" / "TRA" / "man_track.txt").symlink_to("gone.txt")),
         r"DS/01_GT/TRA/man_track.txt: cannot read file \(No such file or directory\)"),
        (lambda ds: (_touch_tiff(ds / "01" / "t000.tif"), (ds / "01_GT").mkdir(),
                     (ds / "01_GT" / "SEG").symlink_to("SEG")),
         r"DS/01_GT/SEG: cannot open folder \(Too many levels of symbolic links\)"),
        (lambda ds: (_touch_tiff(ds / "01" / "t000.tif"), (ds / "01_ST").mkdir(),
                     (ds / "01_ST" / "SEG").symlink_to("gone")),
         "DS/01_ST/SEG: broken symbolic link"),
    ],
)
def test_discover_errors(tmp_path: Path, setup, message: str) -> None:
    setup(tmp_path / "DS")
    with pytest.raises(UserInputError, match=message):
        discover(tmp_path, ["DS"])


def test_discover_names(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="source folder not found"):
        discover(tmp_path / "nope")
    with pytest.raises(UserInputError, match="no CTC datasets found"):
        discover(tmp_path)
    (tmp_path / "Empty").mkdir()
    with pytest.raises(UserInputError, match="Empty: empty dataset"):
        discover(tmp_path, ["Empty"])
    with pytest.raises(UserInputError, match="Missing: dataset folder not found"):
        discover(tmp_path, ["Missing"])


# ------------------------------------------------------------------------------------------------ tiff


def _tiff_bytes(array: np.ndarray, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


def test_decode_tiff_2d_3d_and_bad_files() -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 4000, (40, 50), dtype=np.uint16)
    np.testing.assert_array_equal(decode_tiff(_tiff_bytes(frame, compression="lzw"), "f.tif"), frame)
    volume = rng.integers(0, 255, (6, 40, 50), dtype=np.uint8)
    np.testing.assert_array_equal(decode_tiff(_tiff_bytes(volume, photometric="minisblack"), "v.tif"), volume)
    rgb = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    with pytest.raises(UserInputError, match="rgb.tif: multi-channel image"):
        decode_tiff(_tiff_bytes(rgb, photometric="rgb"), "rgb.tif")
    with pytest.raises(UserInputError, match="g.tif: unreadable TIFF"):
        decode_tiff(b"this is not a tiff file", "g.tif")
    data = _tiff_bytes(frame)
    with pytest.raises(UserInputError, match="c.tif: truncated TIFF"):
        decode_tiff(data[: len(data) // 2], "c.tif")


def test_check_labels() -> None:
    check_labels(np.zeros((3, 3), np.uint16), "ok.tif")
    check_labels(np.zeros((3, 3), np.int32), "ok.tif")
    with pytest.raises(UserInputError, match="f.tif: label image has float32 dtype"):
        check_labels(np.zeros((3, 3), np.float32), "f.tif")
    with pytest.raises(UserInputError, match=r"n.tif: label image has negative values \(min -2\)"):
        check_labels(np.array([[0, -2]], np.int16), "n.tif")
