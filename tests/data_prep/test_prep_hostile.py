"""Hostile input, systematically (issue 18): a small synthetic CTC dataset corrupted at random, a few ways at once.

For every case `celltune data prep` either builds a store that passes the integrity check below (complete,
fingerprint matching the sources, every frame equal to its TIFF, index readable) or refuses with exit code 2
and one stderr line naming a file the corruption touched; after a refusal the output location holds exactly
what it held before (no new folder, no temporary store, a previous store untouched).

The whole CLI runs in-process on the session's Ray (the conversion itself runs in Ray tasks, as in real use);
the clean dataset is generated once and copied per example. Unreadable files (chmod 000) and a read-only
output folder are drawn only when not running as root, where permissions do not block anything.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import event, given, settings
from hypothesis import strategies as st

from celltune.data_prep import store_format as sf
from celltune.data_prep.convert import conversion_params
from celltune.data_prep.ctc_layout import discover
from celltune.data_prep.index import load_index
from celltune.data_prep.info import describe_stores
from celltune.data_prep.prep import _is_up_to_date
from celltune.data_prep.reader import SequenceReader
from celltune.platform.cli import main

pytestmark = pytest.mark.ray

DS = "Hyp-2D"
SIZE, FRAMES = 32, 3
_ROOT = os.geteuid() == 0  # root reads and writes through any permission bits

SEQS = ("01", "02")
RAW = [f"{s}/t{t:03d}.tif" for s in SEQS for t in range(FRAMES)]
GT = [f"{s}_GT/SEG/man_seg{t:03d}.tif" for s in SEQS for t in range(0, FRAMES, 2)]
ST = [f"{s}_ST/SEG/man_seg{t:03d}.tif" for s in SEQS for t in range(FRAMES)]
TRA = [f"{s}_GT/TRA/man_track{t:03d}.tif" for s in SEQS for t in range(FRAMES)]
TRACKS = [f"{s}_GT/TRA/man_track.txt" for s in SEQS]
LABELS = GT + ST + TRA
TIFFS = RAW + LABELS
FILES = TIFFS + TRACKS
FOLDERS = [*SEQS, *(f"{s}_GT" for s in SEQS), *(f"{s}_ST" for s in SEQS), *(f"{s}_GT/SEG" for s in SEQS),
           *(f"{s}_GT/TRA" for s in SEQS), *(f"{s}_ST/SEG" for s in SEQS)]


# ---------------------------------------------------------------------------------------------- corruptions


@dataclass(frozen=True)
class Corruption:
    """One change to the dataset: ``kind`` applied to ``target`` (relative to the dataset folder) with ``arg``."""

    kind: str
    target: str
    arg: object = None

    def apply(self, ds: Path) -> None:
        path = ds / self.target
        try:
            if path.is_symlink() or not path.exists():
                return  # an earlier corruption of this case replaced or removed it
            if self.kind in _FOLDER_KINDS and not path.is_dir():
                return
            if self.kind not in _FOLDER_KINDS | _ANY_KINDS and not path.is_file() or self.arg == path.name:
                return
        except PermissionError:  # inside a folder an earlier corruption made unreadable
            return
        _APPLY[self.kind](path, self.arg)

    def names(self) -> set[str]:
        """Paths (relative to the source folder) that an error caused by this corruption may name."""
        target = f"{DS}/{self.target}"
        out = {DS, target, target.rsplit("/", 1)[0]}
        if self.target in FOLDERS:
            out.add(f"{target}/")  # anything inside it
        if self.kind in ("duplicate", "rename"):
            out.add(f"{DS}/{self.target.rsplit('/', 1)[0]}/{self.arg}")
        if "/TRA/" in self.target:  # a changed mask can contradict the track table
            out.add(f"{DS}/{self.target.split('/')[0]}/TRA/man_track.txt")
        if re.fullmatch(r"\d\d/t\d+\.tif", self.target):  # a missing frame shows as labels without a frame
            seq, t = self.target[:2], self.target[4:7]
            out |= {f"{DS}/{seq}_GT/SEG/man_seg{t}.tif", f"{DS}/{seq}_ST/SEG/man_seg{t}.tif",
                    f"{DS}/{seq}_GT/TRA/man_track{t}.tif"}
        if self.kind == "raw_dtype":  # a whole sequence rewritten
            out |= {f"{DS}/{self.target}/t{t:03d}.tif" for t in range(FRAMES)}
        return out


def _image(path: Path) -> np.ndarray | None:
    """The image in ``path``, or None when an earlier corruption of the case made it unreadable."""
    try:
        return tifffile.imread(path)
    except Exception:  # noqa: BLE001 - tifffile raises many types for damaged files
        return None


def _write(path: Path, data: np.ndarray, **kwargs) -> None:
    tifffile.imwrite(path, data, **({"photometric": "minisblack"} | kwargs))


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _garbage(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _retype(path: Path, dtype: str) -> None:
    image = _image(path)
    if image is None:
        return
    _write(path, image > 0 if dtype == "bool" else image.astype(dtype))


def _raw_dtype(folder: Path, arg: tuple[str, float | None]) -> None:
    """Every raw frame of a sequence as ``dtype``; with a value, one pixel of t001 set to it (NaN, inf)."""
    dtype, value = arg
    for path in sorted(folder.glob("t*.tif")):
        image = None if path.is_symlink() or not path.is_file() else _image(path)
        if image is None:
            continue
        image = image > image.mean() if dtype == "bool" else image.astype(dtype)
        if value is not None and path.name == "t001.tif":
            image.flat[7] = value
        _write(path, image)


def _rgb(path: Path, layout: str) -> None:
    image = _image(path)
    if image is None:
        return
    image = image.astype(np.uint8)
    if layout == "planar":
        _write(path, np.stack([image] * 3), photometric="rgb", planarconfig="separate")
    elif layout == "rgba":
        _write(path, np.stack([image] * 4, axis=-1), photometric="rgb", extrasamples=["unassalpha"])
    else:
        _write(path, np.stack([image] * 3, axis=-1), photometric="rgb")


def _reshape(path: Path, shape: tuple[int, ...]) -> None:
    image = _image(path)
    if image is None:
        return
    _write(path, np.resize(image, shape))


def _track_line(path: Path, arg: tuple[int, str]) -> None:
    """Replace line ``i`` of man_track.txt by ``line`` (``i`` past the end: append it)."""
    index, line = arg
    lines = path.read_bytes().decode(errors="replace").splitlines()
    if index < len(lines):
        lines[index] = line
    else:
        lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def _track_text(path: Path, how: str) -> None:
    lines = path.read_bytes().decode(errors="replace").splitlines()
    if how == "reversed":  # children listed before their parents: still a valid table
        path.write_text("\n".join(reversed(lines)) + "\n")
    elif how == "crlf":
        path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    elif how == "tabs":
        path.write_text("\n".join("\t".join(line.split()) for line in lines) + "\n")
    elif how == "empty":
        path.write_text("")
    elif how == "binary":
        path.write_bytes(b"\x00\xff\xfe garbage \x80\n")


def _remove(path: Path, _arg: object) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _rename(path: Path, name: str) -> None:
    path.rename(path.with_name(name))


def _duplicate(path: Path, name: str) -> None:
    shutil.copyfile(path, path.with_name(name))


def _symlink(path: Path, how: str) -> None:
    _remove(path, None)
    if how == "loop":
        path.symlink_to(path.name)
    elif how == "pair":  # a -> b -> a
        other = path.with_name(f".{path.name}.loop")
        other.symlink_to(path.name)
        path.symlink_to(other.name)
    elif how == "dangling":
        path.symlink_to(f"{path.name}.gone")
    else:  # to its own folder
        path.symlink_to(".")


def _folder_instead(path: Path, _arg: object) -> None:
    _remove(path, None)
    path.mkdir()


def _unreadable(path: Path, _arg: object) -> None:
    path.chmod(0)


def _stray(path: Path, name: str) -> None:
    (path / name).write_bytes(b"not part of the dataset")


_APPLY: dict[str, Callable[[Path, object], None]] = {
    "truncate": _truncate, "garbage": _garbage, "retype": _retype, "raw_dtype": _raw_dtype, "rgb": _rgb,
    "reshape": _reshape, "track_line": _track_line, "track_text": _track_text, "remove": _remove,
    "rename": _rename, "duplicate": _duplicate, "symlink": _symlink, "folder_instead": _folder_instead,
    "unreadable": _unreadable, "stray": _stray,
}

_FOLDER_KINDS = {"raw_dtype", "stray"}
_ANY_KINDS = {"remove", "symlink", "unreadable"}

_BAD_LINES = [
    "1 0 1",  # too few columns
    "1 0 1 0 0",  # too many
    "1 0 x 0", "1.5 0 1 0", "0x1 0 1 0",  # not integers
    "-1 0 1 0", "1 -1 1 0", "3 2 2 -1", "0 0 1 0",  # negative, zero label
    "1 2 1 0",  # end before begin
    "3 2 2 9",  # unknown parent
    "3 2 2 3",  # its own parent
    "3 1 2 1",  # begins before its parent ends
    "2 0 2 0",  # a label defined twice
    "99999999999999999999 0 1 0", "1 0 99999999999999999999 0",  # past int64
    "5 0 3 0",  # ends after the last frame (2)
    "", "   ",  # blank lines are allowed
]


def _corruptions() -> st.SearchStrategy[Corruption]:
    def of(kind: str, targets: list[str], args: st.SearchStrategy) -> st.SearchStrategy[Corruption]:
        return st.builds(Corruption, st.just(kind), st.sampled_from(targets), args)

    frame_names = st.sampled_from(["t000.tif", "t001.tif", "t002.tif", "t005.tif", "t0001.tif", "t001.tiff"])
    options = [
        of("truncate", FILES, st.sampled_from([0.0, 0.05, 0.5, 0.95])),
        of("garbage", TIFFS, st.sampled_from([b"not a TIFF", b"II*\x00\x08\x00\x00\x00\xff\xff", b"MM\x00*"])),
        of("retype", TIFFS, st.sampled_from(["float32", "float64", "bool", "int8", "int16", "int32", "int64",
                                             "uint32", "uint64", "float16", "complex64"])),
        of("raw_dtype", list(SEQS), st.one_of(
            st.tuples(st.sampled_from(["float32", "float64", "float16"]),
                      st.sampled_from([None, float("nan"), float("inf"), float("-inf")])),
            st.tuples(st.sampled_from(["bool", "int8", "int32", "uint64", "complex64"]), st.none()))),
        of("rgb", TIFFS, st.sampled_from(["rgb", "rgba", "planar"])),
        of("reshape", TIFFS, st.sampled_from([(31, SIZE), (SIZE, SIZE + 1), (16, 16), (2, SIZE, SIZE),
                                              (1, SIZE, SIZE), (SIZE, 1), (1, 1)])),
        of("track_line", TRACKS, st.tuples(st.integers(0, 4), st.sampled_from(_BAD_LINES))),
        of("track_text", TRACKS, st.sampled_from(["reversed", "crlf", "tabs", "empty", "binary"])),
        of("remove", FILES + FOLDERS, st.none()),
        of("rename", RAW, frame_names),
        of("duplicate", RAW, frame_names),
        of("symlink", FILES + FOLDERS, st.sampled_from(["loop", "pair", "dangling", "folder"])),
        of("folder_instead", FILES, st.none()),
        of("stray", list(SEQS) + [f"{s}_GT/SEG" for s in SEQS],
           st.sampled_from(["notes.txt", "t1.tif", ".DS_Store", "man_seg.tif"])),
    ]
    if not _ROOT:
        options.append(of("unreadable", FILES + FOLDERS, st.none()))
    return st.one_of(options)


# ---------------------------------------------------------------------------------------------- output folder

OUT_STATES = ["absent", "absent_deep", "empty", "previous", "file", "under_file"] + ([] if _ROOT else ["read_only"])


def _make_out(state: str, root: Path, previous: Path) -> Path:
    """The output location in ``state``; returns the --out path."""
    out = root / "out"
    if state == "absent_deep":  # prep makes the missing parents too
        out = root / "new" / "deeper" / "out"
    elif state == "empty":
        out.mkdir()
    elif state == "previous":  # a complete store of the clean dataset from an earlier run
        shutil.copytree(previous, out, symlinks=True)
    elif state == "file":
        out.write_text("a file, not a folder")
    elif state == "under_file":
        (root / "plain").write_text("a file")
        out = root / "plain" / "out"
    elif state == "read_only":
        out.mkdir()
        out.chmod(0o555)
    return out


def _snapshot(out: Path) -> dict[str, int] | None:
    """Every path under ``out`` (the lock file aside) with its size, or None when ``out`` does not exist."""
    if not out.exists():
        return None
    if not out.is_dir():
        return {"": out.stat().st_size}
    return {p.relative_to(out).as_posix(): p.lstat().st_size for p in out.rglob("*")
            if p.name != sf.LOCK_FILE and not p.is_dir()}


# ---------------------------------------------------------------------------------------------- checks


def _tifffile_frame(path: Path) -> np.ndarray:
    """The frame as tifffile reads it (prep decodes with libtiff), length-1 axes dropped as prep does."""
    image = tifffile.imread(path)
    return image.reshape([n for n in image.shape[:-2] if n != 1] + list(image.shape[-2:]))


def _check_store(src: Path, out: Path) -> None:
    """The integrity check of a store prep said it built: complete, up to date with every source byte, each
    frame equal to its TIFF, labels and targets readable, index and `data info` working, no temporary folders."""
    store = sf.store_path(out, DS)
    assert sf.is_complete_store(store)
    assert [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != sf.LOCK_FILE] == []
    (layout,) = discover(src, [DS])
    assert _is_up_to_date(out, layout, conversion_params(DS)), "store fingerprint does not match the sources"
    assert sf.store_attrs(store)["sequences"] == [s.sequence for s in layout.sequences]
    for seq in layout.sequences:
        reader = SequenceReader(store, seq.sequence)
        assert reader.num_frames == len(seq.raw)
        for t, path in enumerate(seq.raw):
            expected = _tifffile_frame(path)
            got = reader.frame("raw", t)
            assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=True), path
        for kind in sf.LABEL_KINDS:
            files = seq.labels(kind)
            if not files:
                assert not reader.has(kind)
                continue
            for f in files:
                got = reader.frame(kind, f.t)
                assert np.array_equal(got, _tifffile_frame(f.path)), f.path
                if kind in sf.TARGET_SOURCES:
                    weight = reader.frame(f"{sf.TARGET_SOURCES[kind]}/weight", f.t)
                    assert np.isfinite(weight).all()
        stats = reader.stats
        assert all(np.isfinite(v) for v in stats.values() if isinstance(v, float)), stats
    assert load_index(out).num_rows > 0
    assert DS in describe_stores(out)


def _check_refusal(err: str, allowed: set[str], out: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "RayTaskError" not in err
    match = re.match(r"celltune: error: (.+?): ", lines[0])
    assert match, lines[0]
    named = match.group(1)
    # "t001.tif: dtype uint8 differs from t000.tif (float32)" is right when t000.tif was changed
    files = {name.rsplit("/", 1)[-1] for name in allowed if "." in name.rsplit("/", 1)[-1]}
    mentioned = any(re.search(rf"[ (]{re.escape(name)}\b", lines[0]) for name in files)
    inside = any(named.startswith(name) for name in allowed if name.endswith("/"))
    assert named in allowed or mentioned or inside or named == str(out) or named.startswith(f"{out}/"), \
        f"{lines[0]!r} names none of {sorted(allowed)} or {out}"


def _rmtree(root: Path) -> None:
    root.chmod(stat.S_IRWXU)
    for folder, names, _files in os.walk(root):  # give back the permissions a case took, before listing
        for name in names:
            if not os.path.islink(os.path.join(folder, name)):
                os.chmod(os.path.join(folder, name), stat.S_IRWXU)
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- the property


@pytest.fixture(scope="module")
def hostile_base(tmp_path_factory, ray_session) -> tuple[Path, Path]:
    """The clean dataset (generated once) and an output folder holding its complete store."""
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("hostile")
    src = root / "src"
    generate_dataset(src, SynthSpec(name=DS, frames=FRAMES, size=SIZE, cells=2, gt_every=2, seed=5),
                     show_progress=False)
    found = sorted(p.relative_to(src / DS).as_posix() for p in (src / DS).rglob("*") if p.is_file())
    assert found == sorted(FILES)  # the strategies below name these files
    previous = root / "previous"
    assert main(["data", "prep", str(src), "--out", str(previous), "--no-progress"]) == 0
    return src, previous


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(corruptions=st.lists(_corruptions(), max_size=3), out_state=st.sampled_from(OUT_STATES))
def test_prep_builds_a_sound_store_or_refuses_in_one_line(hostile_base, corruptions: list[Corruption],
                                                          out_state: str) -> None:
    base_src, previous = hostile_base
    root = Path(tempfile.mkdtemp(dir=base_src.parent, prefix="case-"))
    try:
        src = root / "src"
        shutil.copytree(base_src, src)
        for corruption in corruptions:
            corruption.apply(src / DS)
        out = _make_out(out_state, root, previous)
        before = _snapshot(out), sorted(p.name for p in root.iterdir())
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["data", "prep", str(src), "--out", str(out), "--datasets", DS, "--no-progress"])
        event(f"exit {code}")  # --hypothesis-show-statistics: how often each outcome and corruption came up
        for corruption in corruptions:
            event(f"{corruption.kind} -> exit {code}")
        assert code in (0, 2), err.getvalue()
        if code == 0:
            assert out_state not in ("file", "under_file", "read_only")
            _check_store(src, out)
        else:
            allowed = set().union(*(c.names() for c in corruptions)) if corruptions else set()
            _check_refusal(err.getvalue(), allowed, out)
            # nothing new: no folder (nor its parents), no store, no temporary folder
            assert (_snapshot(out), sorted(p.name for p in root.iterdir())) == before
            if out_state == "previous":
                assert sf.is_complete_store(sf.store_path(out, DS))
    finally:
        _rmtree(root)
