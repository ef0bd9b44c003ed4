"""Write and read CTC result folders: ``maskNNN.tif`` per frame (labels = track ids) and ``res_track.txt``.

A folder is written complete or not at all: every file goes into a hidden temporary folder beside the
target, which then replaces the target in one rename. The table is checked against the masks before
anything is written (CTC rules, see :mod:`celltune.data_prep.tracks`), so what lands on disk passes the
validity checks of py-ctcmetrics. Masks are written as uint16 with LZW compression like the CTC's own
files; py-ctcmetrics adds the reference's largest label to result labels in place, so narrower types
would overflow there.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from celltune.data_prep.common import UserInputError, default_permissions
from celltune.data_prep.tiff_io import check_labels, decode_tiff, read_bytes
from celltune.data_prep.tracks import check_against_masks, parse_man_track
from celltune.platform.cell_tracker import TrackingResult

logger = logging.getLogger(__name__)

RES_TRACK_TXT = "res_track.txt"
MASK_RE = re.compile(r"^mask(\d{3,4})\.tif$")
_MAX_LABEL = np.iinfo(np.uint16).max


def mask_name(t: int, digits: int) -> str:
    """``mask007.tif`` for ``t=7, digits=3``."""
    return f"mask{t:0{digits}d}.tif"


def list_masks(folder: Path) -> dict[int, Path]:
    """Frame index -> ``maskNNN.tif`` path in ``folder`` (no pixels read)."""
    frames: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = MASK_RE.match(path.name)
        if match and path.is_file():
            t = int(match.group(1))
            if t in frames:
                raise UserInputError(f"{path}: frame {t} also written as {frames[t].name}")
            frames[t] = path
    return frames


def format_tracks(tracks: np.ndarray) -> str:
    """The ``L B E P`` lines of a track table (single spaces, as py-ctcmetrics splits on the first separator)."""
    return "".join(f"{int(l_)} {int(b)} {int(e)} {int(p)}\n" for l_, b, e, p in tracks)


def _present(masks: np.ndarray) -> dict[int, np.ndarray]:
    out = {}
    for t, frame in enumerate(masks):
        ids = np.unique(frame)
        out[t] = ids[ids > 0]
    return out


def check_result(masks: np.ndarray, tracks: np.ndarray, where: str, digits: int = 3) -> None:
    """Check masks ``(T, ...)`` and the table ``(N, 4)`` against the CTC rules; ``where`` prefixes messages.

    Raises:
        UserInputError: a bad table, a label missing from or outside its frames, a frame with no
            table entry, or labels that do not fit the 16-bit CTC format.
    """
    tracks = np.asarray(tracks)
    if tracks.ndim != 2 or tracks.shape[1] != 4 or tracks.dtype.kind not in "iu":
        raise UserInputError(f"{where}: track table of shape {tracks.shape} and dtype {tracks.dtype}; "
                             f"expected integers (N, 4) 'L B E P'")
    table = parse_man_track(format_tracks(tracks), f"{where}/{RES_TRACK_TXT}")
    if table.size and int(table[:, 2].max()) >= len(masks):
        row = table[int(np.argmax(table[:, 2]))]
        raise UserInputError(f"{where}: track {row[0]} ends at frame {row[2]} but there are only {len(masks)} masks")
    if table.size and int(table[:, 0].max()) > _MAX_LABEL:
        raise UserInputError(f"{where}: track label {int(table[:, 0].max())} exceeds {_MAX_LABEL} "
                             f"(CTC labels are 16-bit)")
    names = {t: mask_name(t, digits) for t in range(len(masks))}
    check_against_masks(table, _present(masks), f"{where}/{RES_TRACK_TXT}", names)


def _write_tiff(path: Path, frame: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, frame.astype(np.uint16), compression="lzw")


def write_ctc_result(
    folder: Path,
    masks: np.ndarray | Sequence[np.ndarray],
    tracks: np.ndarray,
    *,
    digits: int = 3,
    overwrite: bool = False,
    show_progress: bool = False,
) -> Path:
    """Write one sequence's result folder (e.g. ``DS/01_RES``) atomically.

    Args:
        folder: target folder; its parent is created if needed.
        masks: ``T`` label images ``(Y, X)`` or ``(Z, Y, X)`` labelled by track id (e.g.
            :attr:`TrackingResult.masks`).
        tracks: ``(N, 4)`` table ``L B E P``.
        digits: digits of the frame number in ``maskNNN.tif`` (3, or 4 for long sequences, as in the
            dataset); raised automatically when ``T`` needs more.
        overwrite: replace an existing non-empty ``folder``.
        show_progress: show a tqdm bar over frames.

    Returns:
        ``folder``.

    Raises:
        UserInputError: the folder exists and is not empty (without ``overwrite``), or masks and table
            break the CTC rules (see :func:`check_result`).
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    if not isinstance(masks, np.ndarray) and len(masks) == 0:
        raise UserInputError(f"{folder}: no masks to write")
    stack = masks if isinstance(masks, np.ndarray) else np.stack([np.asarray(m) for m in masks])
    if stack.ndim not in (3, 4) or len(stack) == 0:
        raise UserInputError(f"{folder}: masks of shape {stack.shape}; expected (T, Y, X) or (T, Z, Y, X)")
    if digits < 3:
        raise UserInputError(f"digits={digits}: CTC frame numbers have at least 3 digits")
    digits = max(digits, len(str(len(stack) - 1)))
    for t in range(len(stack)):
        check_labels(stack[t], f"{folder}/{mask_name(t, digits)}")
    check_result(stack, tracks, str(folder), digits)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not overwrite:
        raise UserInputError(f"{folder}: already exists and is not empty (pass overwrite=True to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = default_permissions(Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent)))
    try:
        for t in tqdm(range(len(stack)), desc=f"writing {folder.name}", unit="frame",
                      disable=None if show_progress else True):
            _write_tiff(tmp / mask_name(t, digits), stack[t])
        (tmp / RES_TRACK_TXT).write_text(format_tracks(np.asarray(tracks)))
        old = None
        if folder.exists() or folder.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("wrote %s: %d masks, %d tracks", folder, len(stack), len(tracks))
    return folder


def read_ctc_result(folder: Path, *, show_progress: bool = False) -> TrackingResult:
    """Read and check a result folder written by :func:`write_ctc_result` or any CTC tracker.

    Returns:
        TrackingResult with masks ``(T, ...)`` int32 and the ``(N, 4)`` int64 table.

    Raises:
        UserInputError: missing folder, masks or ``res_track.txt``, frames not numbered 0..T-1, unreadable
            or differently shaped TIFFs, or masks and table that break the CTC rules.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    if not folder.is_dir():
        raise UserInputError(f"{folder}: result folder not found")
    paths = list_masks(folder)
    if not paths:
        raise UserInputError(f"{folder}: no maskNNN.tif files")
    missing = sorted(set(range(len(paths))) - set(paths))
    if missing:
        raise UserInputError(f"{folder}: frame {missing[0]} has no mask (frames must be numbered 0..T-1, "
                             f"found {len(paths)} masks up to {max(paths)})")
    track_file = folder / RES_TRACK_TXT
    if not track_file.is_file():
        raise UserInputError(f"{track_file}: missing")
    table = parse_man_track(read_bytes(track_file, str(track_file)).decode("utf-8", "replace"), str(track_file))
    frames = []
    for t in tqdm(range(len(paths)), desc=f"reading {folder.name}", unit="frame",
                  disable=None if show_progress else True):
        rel = str(paths[t])
        frame = check_labels(decode_tiff(read_bytes(paths[t], rel), rel), rel)
        if frames and frame.shape != frames[0].shape:
            raise UserInputError(f"{rel}: shape {frame.shape} differs from {paths[0].name} {frames[0].shape}")
        frames.append(frame)
    masks = np.stack(frames).astype(np.int32)
    if table.size and int(table[:, 2].max()) >= len(masks):
        row = table[int(np.argmax(table[:, 2]))]
        raise UserInputError(f"{track_file}: track {row[0]} ends at frame {row[2]} but there are only "
                             f"{len(masks)} masks")
    check_against_masks(table, _present(masks), str(track_file), {t: p.name for t, p in paths.items()})
    return TrackingResult(masks=masks, tracks=table)
