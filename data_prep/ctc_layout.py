"""Find CTC training datasets, their sequences and files, and check the folder layout (no pixels read).

Layout (Cell Tracking Challenge training data)::

    <DS>/01/tNNN.tif                      raw frames, 3 or 4 digits, contiguous from t000
    <DS>/01_GT/SEG/man_segNNN.tif         GT instance labels (some frames; 2D, or full 3D volumes)
    <DS>/01_GT/SEG/man_seg_TTT_ZZZ.tif    GT of one z-slice ZZZ of 3D frame TTT
    <DS>/01_GT/TRA/man_trackNNN.tif       GT tracking markers (a frame range) + man_track.txt
    <DS>/01_ST/SEG/man_segNNN.tif         silver-truth labels (optional)

Problems a user can fix raise UserInputError naming the path relative to the source folder.
"""

from __future__ import annotations

import logging
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from celltune.data_prep.common import UserInputError

logger = logging.getLogger(__name__)

_SEQ_RE = re.compile(r"^(\d{2,})$")
_SEQ_EXTRA_RE = re.compile(r"^(\d{2,})_(GT|ST)$")
_RAW_RE = re.compile(r"^t(\d{3,4})\.tiff?$")
_SEG_RE = re.compile(r"^man_seg(\d{3,4})\.tiff?$")
_SEG_SLICE_RE = re.compile(r"^man_seg_(\d{3,4})_(\d{3,4})\.tiff?$")
_TRA_RE = re.compile(r"^man_track(\d{3,4})\.tiff?$")
MAN_TRACK_TXT = "man_track.txt"


@dataclass(frozen=True)
class LabelFile:
    """One label TIFF: frame ``t`` and, for a single annotated slice of a 3D frame, its ``z``."""

    path: Path
    t: int
    z: int | None = None


@dataclass(frozen=True)
class SequenceLayout:
    """The files of one sequence (``01``, ``02``, ...) of a dataset."""

    dataset: str
    sequence: str
    src: Path  # the folder holding the datasets; messages name files relative to it
    raw: tuple[Path, ...]  # raw[t] is frame t
    digits: int
    gt_seg: tuple[LabelFile, ...] = ()
    st_seg: tuple[LabelFile, ...] = ()
    tra: tuple[LabelFile, ...] = ()
    man_track: Path | None = None

    @property
    def dataset_dir(self) -> Path:
        return self.src / self.dataset

    def labels(self, kind: str) -> tuple[LabelFile, ...]:
        return {"gt_seg": self.gt_seg, "st_seg": self.st_seg, "tra": self.tra}[kind]

    def files(self) -> list[Path]:
        """Every file the conversion reads, in reading order."""
        out = list(self.raw)
        for kind in ("gt_seg", "st_seg", "tra"):
            out += [f.path for f in self.labels(kind)]
        if self.man_track is not None:
            out.append(self.man_track)
        return out

    def rel(self, path: Path) -> str:
        """``path`` relative to the source folder, for messages (``DS/01_GT/SEG/man_seg003.tif``)."""
        try:
            return path.relative_to(self.src).as_posix()
        except ValueError:
            return str(path)

    def rel_to_dataset(self, path: Path) -> str:
        return path.relative_to(self.dataset_dir).as_posix()


@dataclass(frozen=True)
class DatasetLayout:
    name: str
    path: Path
    sequences: tuple[SequenceLayout, ...] = field(default_factory=tuple)

    def files(self) -> list[Path]:
        return [f for seq in self.sequences for f in seq.files()]


def _rel(src: Path, path: Path) -> str:
    try:
        return path.relative_to(src).as_posix()
    except ValueError:
        return str(path)


def _entries(src: Path, folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; an unreadable folder is a one-line error naming it."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise UserInputError(f"{_rel(src, folder)}: cannot list folder ({exc.strerror or exc})") from None


def _is_folder(src: Path, folder: Path) -> bool:
    """Whether ``folder`` exists; a symlink loop, a dangling link or a file in its place is a one-line error
    (skipping it would leave its annotations out of the store without a word)."""
    try:
        mode = folder.stat().st_mode
    except FileNotFoundError:
        if folder.is_symlink():
            raise UserInputError(f"{_rel(src, folder)}: broken symbolic link") from None
        return False
    except OSError as exc:
        raise UserInputError(f"{_rel(src, folder)}: cannot open folder ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(mode):
        raise UserInputError(f"{_rel(src, folder)}: not a folder")
    return True


def _is_dataset_dir(src: Path, path: Path) -> bool:
    if not path.is_dir() or path.name.startswith("."):
        return False
    try:
        children = list(path.iterdir())
    except OSError as exc:  # e.g. lost+found beside the datasets; a dataset named with --datasets fails instead
        logger.warning("%s: skipped (cannot list folder: %s)", _rel(src, path), exc.strerror or exc)
        return False
    return any(_SEQ_RE.match(p.name) or _SEQ_EXTRA_RE.match(p.name) for p in children if p.is_dir())


def discover(src: Path | str, names: list[str] | None = None) -> list[DatasetLayout]:
    """Datasets in ``src`` (all folders with CTC sequences, or exactly ``names``), with their files.

    Raises:
        UserInputError: ``src`` missing, a named dataset missing, a dataset with no sequences, a sequence
            with GT/ST but no raw folder or no raw frames, gaps in the raw frames, labels for frames
            that have no raw frame, duplicate or conflicting label files, TRA masks without man_track.txt,
            a CTC file name that is not a readable regular file (a symlink loop, a dangling link, a folder).
    """
    src = Path(src)
    if not src.is_dir():
        raise UserInputError(f"{src}: source folder not found")
    if names is not None:
        if not names:
            raise UserInputError("--datasets: no dataset names given")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise UserInputError(f"--datasets: {', '.join(dup)} given more than once")
        for name in names:
            if "/" in name or name in (".", "..") or not (src / name).is_dir():
                raise UserInputError(f"{src / name}: dataset folder not found")
        dirs = [src / n for n in names]
    else:
        dirs = [p for p in _entries(src, src) if _is_dataset_dir(src, p)]
        if not dirs:
            raise UserInputError(f"{src}: no CTC datasets found (expected <DS>/01/t000.tif, <DS>/01_GT, ...)")
    return [_discover_dataset(src, d) for d in dirs]


def _discover_dataset(src: Path, path: Path) -> DatasetLayout:
    entries = {p.name: p for p in _entries(src, path)}
    seq_names = sorted({m.group(1) for n in entries if (m := _SEQ_RE.match(n) or _SEQ_EXTRA_RE.match(n))})
    if not seq_names:
        raise UserInputError(f"{_rel(src, path)}: empty dataset: no sequence folders (01, 02, ...)")
    sequences = []
    for seq in seq_names:
        raw_dir = path / seq
        if not _is_folder(src, raw_dir):
            have = ", ".join(n for n in (f"{seq}_GT", f"{seq}_ST") if n in entries)
            raise UserInputError(f"{_rel(src, raw_dir)}: raw folder missing ({have} exists)")
        sequences.append(_discover_sequence(src, path, seq))
    return DatasetLayout(path.name, path, tuple(sequences))


def _check_file(src: Path, path: Path) -> Path:
    """``path`` if it is a regular file (or a link to one); a symlink loop, a dangling link or a folder under a
    CTC file name is refused here, before any work starts."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise UserInputError(f"{_rel(src, path)}: cannot read file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise UserInputError(f"{_rel(src, path)}: not a regular file")
    return path


def _scan(folder: Path, pattern: re.Pattern[str], src: Path) -> list[tuple[re.Match[str], Path]]:
    """Files of ``folder`` matching ``pattern``; other TIFFs are logged and ignored."""
    found: list[tuple[re.Match[str], Path]] = []
    for p in _entries(src, folder):
        m = pattern.match(p.name)
        if m:
            found.append((m, _check_file(src, p)))
        elif p.suffix.lower() in (".tif", ".tiff"):
            logger.warning("%s: ignored (name does not match %s)", _rel(src, p), pattern.pattern)
    return found


def _discover_sequence(src: Path, path: Path, seq: str) -> SequenceLayout:
    raw_dir = path / seq
    raw_found = _scan(raw_dir, _RAW_RE, src)
    if not raw_found:
        raise UserInputError(f"{_rel(src, raw_dir)}: no raw frames (expected t000.tif, t001.tif, ...)")
    by_t: dict[int, Path] = {}
    digits = {len(m.group(1)) for m, _ in raw_found}
    for m, p in raw_found:
        t = int(m.group(1))
        if t in by_t:
            raise UserInputError(f"{_rel(src, p)}: frame {t} also in {by_t[t].name}")
        by_t[t] = p
    if len(digits) > 1:
        raise UserInputError(f"{_rel(src, raw_dir)}: raw file names mix 3 and 4 digits")
    num = len(by_t)
    missing = [t for t in range(num) if t not in by_t]
    if missing:
        width = digits.pop()
        raise UserInputError(f"{_rel(src, raw_dir)}: raw frames not contiguous from t{0:0{width}d}: "
                             f"t{missing[0]:0{width}d}.tif missing")
    raw = tuple(by_t[t] for t in range(num))

    def labels(folder: Path, patterns: tuple[re.Pattern[str], ...]) -> tuple[LabelFile, ...]:
        out: dict[tuple[int, int | None], LabelFile] = {}
        if not _is_folder(src, folder):
            return ()
        for p in _entries(src, folder):
            m = next((m for pat in patterns if (m := pat.match(p.name))), None)
            if m is None:
                if p.suffix.lower() in (".tif", ".tiff"):
                    logger.warning("%s: ignored (not a CTC label file name)", _rel(src, p))
                continue
            t = int(m.group(1))
            z = int(m.group(2)) if m.re is _SEG_SLICE_RE else None
            if t >= num:
                raise UserInputError(f"{_rel(src, p)}: no raw frame t{t:0{len(m.group(1))}d} in {seq}/ "
                                     f"(frames 0..{num - 1})")
            if (t, z) in out:
                raise UserInputError(f"{_rel(src, p)}: frame {t} also annotated by {out[(t, z)].path.name}")
            out[(t, z)] = LabelFile(_check_file(src, p), t, z)
        full = {t for t, z in out if z is None}
        for (t, z), f in out.items():
            if z is not None and t in full:
                raise UserInputError(f"{_rel(src, f.path)}: frame {t} also has a full annotation man_seg{t:03d}")
        return tuple(sorted(out.values(), key=lambda f: (f.t, -1 if f.z is None else f.z)))

    gt_seg = labels(path / f"{seq}_GT" / "SEG", (_SEG_RE, _SEG_SLICE_RE))
    st_seg = labels(path / f"{seq}_ST" / "SEG", (_SEG_RE, _SEG_SLICE_RE))
    tra_dir = path / f"{seq}_GT" / "TRA"
    tra = labels(tra_dir, (_TRA_RE,))
    man_track = tra_dir / MAN_TRACK_TXT
    if man_track.is_symlink() or man_track.exists():
        _check_file(src, man_track)
    else:
        if tra:
            raise UserInputError(f"{_rel(src, man_track)}: missing (TRA masks need the track table)")
        man_track = None
    return SequenceLayout(
        dataset=path.name, sequence=seq, src=src, raw=raw, digits=len(raw_found[0][0].group(1)),
        gt_seg=gt_seg, st_seg=st_seg, tra=tra, man_track=man_track,
    )
