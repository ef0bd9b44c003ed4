"""Hostile `predict` input, systematically (issue 18): a small sequence folder corrupted at random, a few ways at
once, predicted with `celltune predict` as a user would (in-process, one sequence, no Ray).

For every case the command either writes a whole CTC result folder (one mask per input frame, each the shape of its
frame, and res_track.txt) or refuses with exit code 2 and one stderr line naming a file the corruption touched (or
the output folder); after a refusal the output location holds exactly what it held before and no hidden temporary
folder is left beside it. Unreadable files are drawn only when not running as root.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import event, given, settings
from hypothesis import strategies as st

from celltune.platform.cli import main

FRAMES, SIZE = 3, 32
NAMES = [f"t{t:03d}.tif" for t in range(FRAMES)]
_ROOT = os.geteuid() == 0


@dataclass(frozen=True)
class Corruption:
    kind: str
    target: str  # a frame file name in the sequence folder

    def apply(self, seq: Path, rng: np.random.Generator) -> None:
        path = seq / self.target
        if path.is_symlink() or not path.is_file():
            return  # an earlier corruption replaced or removed it
        try:
            data = path.read_bytes()
        except PermissionError:  # an earlier corruption made it unreadable
            return
        frame = None
        if self.kind in _NEEDS_FRAME:
            try:
                frame = tifffile.imread(path)
            except (tifffile.TiffFileError, ValueError, OSError):
                return  # an earlier corruption of this case left no frame to change
            if frame.ndim != 2:
                return
        path.unlink()
        if self.kind == "truncate":
            path.write_bytes(data[: int(rng.integers(1, max(2, len(data) - 1)))])
        elif self.kind == "zero_bytes":
            path.write_bytes(b"")
        elif self.kind == "garbage":
            path.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
        elif self.kind == "float_nan":
            bad = frame.astype(np.float32)
            bad[0, 0], bad[1, 1] = np.nan, np.inf
            tifffile.imwrite(path, bad)
        elif self.kind == "float64":
            tifffile.imwrite(path, frame.astype(np.float64) * 1e6)
        elif self.kind == "int64":
            tifffile.imwrite(path, frame.astype(np.int64) - 2**40)
        elif self.kind == "bool":
            tifffile.imwrite(path, frame > frame.mean())
        elif self.kind == "complex":
            tifffile.imwrite(path, frame.astype(np.complex64))
        elif self.kind == "rgb":
            tifffile.imwrite(path, np.stack([frame] * 3, axis=-1), photometric="rgb")
        elif self.kind == "bigger":
            tifffile.imwrite(path, np.zeros((SIZE + 8, SIZE), frame.dtype))
        elif self.kind == "stack_3d":
            tifffile.imwrite(path, np.stack([frame] * 4), photometric="minisblack")
        elif self.kind == "tiny":
            tifffile.imwrite(path, frame[:2, :2])
        elif self.kind == "constant":
            tifffile.imwrite(path, np.full_like(frame, 7))
        elif self.kind == "remove":
            pass
        elif self.kind == "symlink_loop":
            path.symlink_to(path.name)
        elif self.kind == "broken_link":
            path.symlink_to("does-not-exist.tif")
        elif self.kind == "folder_instead":
            path.mkdir()
        elif self.kind == "duplicate_number":
            path.write_bytes(data)
            (seq / f"t{int(self.target[1:4]):04d}.tif").write_bytes(data)
        elif self.kind == "unreadable":
            path.write_bytes(data)
            path.chmod(0)


_NEEDS_FRAME = {"float_nan", "float64", "int64", "bool", "complex", "rgb", "bigger", "stack_3d", "tiny", "constant"}
KINDS = sorted(_NEEDS_FRAME | {"truncate", "zero_bytes", "garbage", "remove", "symlink_loop", "broken_link",
                                "folder_instead", "duplicate_number"} | (set() if _ROOT else {"unreadable"}))
OUT_STATES = ["absent", "absent_deep", "empty", "previous", "file", "under_file"]


def _make_out(state: str, root: Path) -> Path:
    out = root / "out"
    if state == "absent_deep":
        out = root / "new" / "deeper" / "out"
    elif state == "empty":
        out.mkdir()
    elif state == "previous":  # a user's earlier result: refused without --overwrite, and left as it was
        (out / "01_RES").mkdir(parents=True)
        (out / "01_RES" / "mask000.tif").write_bytes(b"an earlier result")
    elif state == "file":
        out.write_text("a file, not a folder")
    elif state == "under_file":
        (root / "plain").write_text("a file")
        out = root / "plain" / "out"
    return out


def _snapshot(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): (p.lstat().st_size if not p.is_dir() else -1)
            for p in root.rglob("*") if "seq" not in p.relative_to(root).parts[:1]}


@pytest.fixture(scope="module")
def clean_sequence(tmp_path_factory) -> Path:
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    root = tmp_path_factory.mktemp("predict-hostile")
    generate_dataset(root, SynthSpec(name="Hyp-Predict", sequences=1, frames=FRAMES, size=SIZE, cells=2, seed=3),
                     show_progress=False)
    seq = root / "Hyp-Predict" / "01"
    assert sorted(p.name for p in seq.iterdir()) == NAMES
    return seq


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(corruptions=st.lists(st.builds(Corruption, st.sampled_from(KINDS), st.sampled_from(NAMES)), max_size=3),
       out_state=st.sampled_from(OUT_STATES), seed=st.integers(0, 2**16))
def test_predict_writes_a_whole_result_or_refuses_in_one_line(checkpoint, one_torch_thread, clean_sequence,
                                                             corruptions, out_state, seed):
    root = Path(tempfile.mkdtemp(prefix="case-", dir=clean_sequence.parent.parent))
    try:
        seq = root / "seq" / "01"
        shutil.copytree(clean_sequence, seq)
        rng = np.random.default_rng(seed)
        for corruption in corruptions:
            corruption.apply(seq, rng)
        out = _make_out(out_state, root)
        before = _snapshot(root)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["predict", "--model", str(checkpoint), "--input", str(seq), "--out", str(out),
                         "--no-ray", "--no-progress", "--no-track"])
        event(f"exit {code}")
        for corruption in corruptions:
            event(f"{corruption.kind} -> exit {code}")
        assert code in (0, 2), err.getvalue()
        if code == 0:
            assert out_state in ("absent", "absent_deep", "empty")
            frames = sorted(p.name for p in seq.iterdir())  # one sequence: `out` is its result folder
            masks = sorted(p.name for p in out.iterdir() if p.suffix == ".tif")
            assert len(masks) == len(frames) and (out / "res_track.txt").is_file(), (frames, masks)
            for frame_name, mask_name in zip(frames, masks, strict=True):
                frame, mask = tifffile.imread(seq / frame_name), tifffile.imread(out / mask_name)
                assert mask.shape == frame.shape[:2] and mask.dtype == np.uint16, (frame_name, mask.shape)
        else:
            lines = err.getvalue().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("celltune: error: "), err.getvalue()
            assert "Traceback" not in err.getvalue()
            touched = {c.target for c in corruptions} | {f"t{int(c.target[1:4]):04d}.tif" for c in corruptions}
            named = any(re.search(rf"\b{re.escape(name)}\b", lines[0]) for name in touched)
            where = lines[0].removeprefix("celltune: error: ").split(": ", 1)[0]
            assert named or where in (str(out), str(seq)) or str(out) in lines[0], \
                f"{lines[0]!r} names none of {sorted(touched)}, {seq} or {out}"
            assert _snapshot(root) == before, "a refused prediction changed the output location"
    finally:
        for path in root.rglob("*"):
            if not path.is_symlink():
                path.chmod(0o700)
        shutil.rmtree(root, ignore_errors=True)
