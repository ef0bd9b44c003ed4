"""Bad input to `celltune data prep`: exit code 2, one stderr line naming the file and the problem, and no
store (or temporary folder) left behind. Problems found inside Ray tasks arrive as the same one-line error."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from celltune.platform.cli import main

pytestmark = pytest.mark.ray

DS = "Bad-2D"


@pytest.fixture(scope="module")
def base_src(tmp_path_factory) -> Path:
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    src = tmp_path_factory.mktemp("base")
    generate_dataset(src, SynthSpec(name=DS, frames=6, size=48, cells=3, gt_every=2, seed=4), show_progress=False)
    return src


def _break_file(path: Path, data: np.ndarray) -> None:
    tifffile.imwrite(path, data, photometric="minisblack")


def _shorten_track(ds: Path) -> None:
    """End the first track one frame early in man_track.txt, though its marker is still in the last frame."""
    path = ds / "01_GT" / "TRA" / "man_track.txt"
    rows = [line.split() for line in path.read_text().splitlines()]
    label, begin, end, parent = rows[0]
    assert int(end) > int(begin)
    rows[0] = [label, begin, str(int(end) - 1), parent]
    path.write_text("".join(" ".join(r) + "\n" for r in rows))


def _float_raws_with_nan(ds: Path) -> None:
    """Sequence 02 as float32 frames (a valid raw type), one pixel of t003 not a number."""
    for path in sorted((ds / "02").glob("t*.tif")):
        frame = tifffile.imread(path).astype(np.float32)
        if path.name == "t003.tif":
            frame[5, 7] = np.nan
        _break_file(path, frame)


def _huge_label_id(ds: Path) -> None:
    """A label id past 32 bits in an int64 label image: stored as uint32 it would wrap onto another cell."""
    labels = tifffile.imread(ds / "01_GT/SEG/man_seg002.tif").astype(np.int64)
    labels[labels == labels.max()] = 2**32 + 1
    _break_file(ds / "01_GT/SEG/man_seg002.tif", labels)


def _complex_raws(ds: Path) -> None:
    """Sequence 02 as complex64 frames: no intensity to normalise (zarr cannot shard them either)."""
    for path in sorted((ds / "02").glob("t*.tif")):
        _break_file(path, tifffile.imread(path).astype(np.complex64))


def _symlink_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CASES: dict[str, tuple[Callable[[Path], object], str]] = {
    "missing raw folder": (lambda ds: shutil.rmtree(ds / "02"), f"{DS}/02: raw folder missing (02_GT, 02_ST exists)"),
    "unreadable tiff": (lambda ds: (ds / "01" / "t002.tif").write_bytes(b"garbage, not a TIFF at all"),
                        f"{DS}/01/t002.tif: unreadable TIFF"),
    "truncated tiff": (lambda ds: _truncate(ds / "02" / "t003.tif"), f"{DS}/02/t003.tif: truncated"),
    "label shape": (lambda ds: _break_file(ds / "01_GT/SEG/man_seg002.tif", np.zeros((40, 48), np.uint16)),
                    f"{DS}/01_GT/SEG/man_seg002.tif: label shape (40, 48) differs from raw frame t002.tif shape "
                    "(48, 48)"),
    "float labels": (lambda ds: _break_file(ds / "01_ST/SEG/man_seg001.tif", np.zeros((48, 48), np.float32)),
                     f"{DS}/01_ST/SEG/man_seg001.tif: label image has float32 dtype"),
    "negative labels": (lambda ds: _break_file(ds / "02_GT/SEG/man_seg004.tif", np.full((48, 48), -1, np.int16)),
                        f"{DS}/02_GT/SEG/man_seg004.tif: label image has negative values (min -1)"),
    "man_track contradicts TRA": (_shorten_track, f"{DS}/01_GT/TRA/man_track.txt: track 1 (frames 0-4) appears in "
                                                  "man_track005.tif, outside its frames"),
    "man_track malformed": (lambda ds: (ds / "02_GT/TRA/man_track.txt").write_text("1 0 5\n"),
                            f"{DS}/02_GT/TRA/man_track.txt: line 1 '1 0 5': expected four integers"),
    "mixed 2D/3D": (lambda ds: _break_file(ds / "01" / "t004.tif", np.zeros((3, 48, 48), np.uint8)),
                    f"{DS}/01/t004.tif: 3D frame (3, 48, 48) in a sequence of 2D frames (t000.tif is (48, 48))"),
    "NaN raw pixel": (_float_raws_with_nan, f"{DS}/02/t003.tif: 1 pixel(s) are NaN or infinite"),
    "label id past 32 bits": (_huge_label_id, f"{DS}/01_GT/SEG/man_seg002.tif: label id 4294967297 does not fit "
                                              "32 bits"),
    "empty dataset": (lambda ds: [shutil.rmtree(p) for p in ds.iterdir()], f"{DS}: empty dataset"),
    "no raw frames": (lambda ds: [p.unlink() for p in (ds / "01").iterdir()], f"{DS}/01: no raw frames"),
    "symlink loop frame": (lambda ds: _symlink_loop(ds / "01" / "t002.tif"),
                           f"{DS}/01/t002.tif: cannot read file (Too many levels of symbolic links)"),
    "complex raw frames": (_complex_raws, f"{DS}/02/t000.tif: raw frame has complex64 dtype; expected integer or "
                                          "float intensities"),
}


def _assert_one_line_error(capsys, code: int, expected: str) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("celltune: error: ")
    assert expected in lines[0], lines[0]
    assert "RayTaskError" not in err and "Traceback" not in err


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_and_leaves_no_store(case: str, base_src: Path, tmp_path: Path, capsys,
                                               ray_session) -> None:
    src = tmp_path / "src"
    shutil.copytree(base_src, src)
    breaker, expected = CASES[case]
    breaker(src / DS)
    out = tmp_path / "out"
    code = main(["data", "prep", str(src), "--out", str(out), "--datasets", DS, "--no-progress"])
    _assert_one_line_error(capsys, code, expected)
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert not out.exists(), left  # the run made the folder, so nothing of it stays: no store, temp folder or lock


def test_target_exists_and_is_not_a_store(base_src: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    (out / f"{DS}.zarr").mkdir(parents=True)
    (out / f"{DS}.zarr" / "precious.txt").write_text("keep me")
    code = main(["data", "prep", str(base_src), "--out", str(out), "--no-progress"])
    _assert_one_line_error(capsys, code, f"{out / DS}.zarr: exists and is not a celltune store")
    assert (out / f"{DS}.zarr" / "precious.txt").read_text() == "keep me"


def test_unknown_dataset_name(base_src: Path, tmp_path: Path, capsys) -> None:
    code = main(["data", "prep", str(base_src), "--out", str(tmp_path / "out"), "--datasets", "Nope"])
    _assert_one_line_error(capsys, code, f"{base_src / 'Nope'}: dataset folder not found")


def test_bad_dataset_does_not_touch_a_good_existing_store(base_src: Path, tmp_path: Path, capsys,
                                                          ray_session) -> None:
    """A failed rebuild keeps the previous complete store: the new one is built aside and never swapped in."""
    from celltune.data_prep import store_format as sf

    src = tmp_path / "src"
    shutil.copytree(base_src, src)
    out = tmp_path / "out"
    assert main(["data", "prep", str(src), "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    before = sf.store_attrs(out / f"{DS}.zarr")["fingerprint"]
    _truncate(src / DS / "01" / "t001.tif")
    code = main(["data", "prep", str(src), "--out", str(out), "--no-progress"])
    _assert_one_line_error(capsys, code, f"{DS}/01/t001.tif: truncated")
    assert sf.is_complete_store(out / f"{DS}.zarr")
    assert sf.store_attrs(out / f"{DS}.zarr")["fingerprint"] == before
    assert sorted(p.name for p in out.iterdir()) == [".prep.lock", f"{DS}.zarr", "index.parquet"]


def test_out_under_a_file(base_src: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "plain").write_text("a file")
    code = main(["data", "prep", str(base_src), "--out", str(tmp_path / "plain" / "out"), "--no-progress"])
    _assert_one_line_error(capsys, code, f"{tmp_path / 'plain' / 'out'}: cannot create the output folder (Not a "
                                         "directory)")


def test_out_that_cannot_be_written(base_src: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    (out / ".prep.lock").mkdir(parents=True)  # the lock file cannot be opened, as in a read-only folder
    code = main(["data", "prep", str(base_src), "--out", str(out), "--no-progress"])
    _assert_one_line_error(capsys, code, f"{out}: cannot write in the output folder (Is a directory)")
    assert [p.name for p in out.iterdir()] == [".prep.lock"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_read_only_out(base_src: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        code = main(["data", "prep", str(base_src), "--out", str(tmp_path / "ro" / "out"), "--no-progress"])
        _assert_one_line_error(capsys, code, f"{tmp_path / 'ro' / 'out'}: cannot create the output folder "
                                             "(Permission denied)")
        code = main(["data", "prep", str(base_src), "--out", str(tmp_path / "ro"), "--no-progress"])
        _assert_one_line_error(capsys, code, f"{tmp_path / 'ro'}: cannot write in the output folder (Permission "
                                             "denied)")
    finally:
        (tmp_path / "ro").chmod(0o755)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads through permission bits")
def test_unreadable_folder(base_src: Path, tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    shutil.copytree(base_src, src)
    (src / DS / "01_GT" / "SEG").chmod(0)
    try:
        code = main(["data", "prep", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
        _assert_one_line_error(capsys, code, f"{DS}/01_GT/SEG: cannot list folder (Permission denied)")
    finally:
        (src / DS / "01_GT" / "SEG").chmod(0o755)
    assert not (tmp_path / "out").exists()


def test_failed_prep_removes_the_parent_folders_it_made(base_src: Path, tmp_path: Path, capsys,
                                                        ray_session) -> None:
    src = tmp_path / "src"
    shutil.copytree(base_src, src)
    _truncate(src / DS / "02" / "t001.tif")
    code = main(["data", "prep", str(src), "--out", str(tmp_path / "new" / "deeper" / "out"), "--no-progress"])
    _assert_one_line_error(capsys, code, f"{DS}/02/t001.tif: truncated")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
