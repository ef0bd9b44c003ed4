"""Input sequences for prediction: one class per input format, and discovery that walks the list of them.

An input path is a CTC sequence folder of ``tNNN.tif`` frames, a folder of such folders (a CTC dataset folder
with ``01/`` and ``02/``), a multi-page TIFF stack or a celltune zarr store; frames are 2D ``(Y, X)`` or 3D
``(Z, Y, X)``. :func:`find_sequences` asks each class in :data:`INPUT_FORMATS`, in order, whether it recognises
the path; the first that does names the sequences there. A sequence (a :class:`SequenceSource`) is named but
not read, small and picklable, so a Ray task gets it and reads the frames itself.

How to add an input format (as nnU-Net's ``imageio`` readers):

1. Subclass :class:`SequenceSource` (a frozen dataclass) with a ``kind`` label, and implement ``discover``
   (the sequences at a path, or None when the path is not of this format), ``probe`` (frame count, shape and
   dtype from headers) and ``open`` (an :class:`OpenedSequence`: frame count, a frame reader, the intensity
   statistics if the format stores them); override ``where``/``frame_where`` if messages should name the
   sequence or its frames otherwise.
2. Add the class to :data:`INPUT_FORMATS`, before any format that would also claim its paths.

Discovery, probing, reading, the statistics, the model checks and the Ray tasks all go through these methods;
nothing else needs to change.
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from celltune.data_prep import store_format as sf
from celltune.data_prep.common import UserInputError

_FRAME_RE = re.compile(r"^t(\d{3,4})\.tiff?$")
_TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class SequenceProbe:
    """What a sequence holds, from headers only: frame count, frame shape (2D or 3D) and dtype."""

    num_frames: int
    frame_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.frame_shape)


@dataclass(frozen=True)
class OpenedSequence:
    """A sequence ready to read: ``read(t)`` gives frame t as stored (checked by :class:`SequenceFrames`)."""

    num_frames: int
    read: Callable[[int], np.ndarray]
    stats: Mapping[str, float] | None = None  # the intensity statistics data prep stored, if the format has them


@dataclass(frozen=True)
class SequenceSource(ABC):
    """One input sequence of some format, named but not read (see the module docstring for the formats)."""

    name: str  # "01", or the folder / file stem
    path: Path  # the sequence folder, the TIFF file or the store
    digits: int = 3  # of the frame numbers in the result's file names
    kind: ClassVar[str]  # the format's label: "ctc", "tiff", "zarr"

    @classmethod
    @abstractmethod
    def discover(cls, path: Path) -> tuple[list[SequenceSource], bool] | None:
        """The sequences at existing ``path`` and whether it is a collection, None when it is not this format.

        Raises:
            UserInputError: ``path`` is of this format but broken.
        """

    @abstractmethod
    def probe(self) -> SequenceProbe:
        """Frame count, shape and dtype from headers.

        Raises:
            UserInputError: unreadable headers or an image that is not one channel of 2D or 3D frames.
        """

    @abstractmethod
    def open(self) -> OpenedSequence:
        """The sequence ready to read frames from."""

    @property
    def where(self) -> str:
        """How messages name this sequence."""
        return str(self.path)

    def frame_where(self, t: int) -> str:
        """How messages name frame ``t``."""
        return f"{self.where}[{t}]"


# ------------------------------------------------------------------------------------------------ formats


@dataclass(frozen=True)
class TiffStack(SequenceSource):
    """A multi-page ``.tif``/``.tiff`` file: ``(T, Y, X)``, or ``(T, Z, Y, X)`` as an ImageJ hyperstack."""

    kind = "tiff"

    @classmethod
    def discover(cls, path: Path) -> tuple[list[SequenceSource], bool] | None:
        if not path.is_file() or path.suffix.lower() not in _TIFF_SUFFIXES:
            return None
        return [cls(name=path.stem, path=path)], False

    def probe(self) -> SequenceProbe:
        shape, axes, dtype = _tiff_header(self.path)
        stack = _stack_shape(shape, axes, str(self.path))
        return SequenceProbe(stack[0], stack[1:], dtype)

    def open(self) -> OpenedSequence:
        stack = _read_stack(self.path)
        return OpenedSequence(len(stack), stack.__getitem__)


@dataclass(frozen=True)
class StoreSequence(SequenceSource):
    """A sequence of a celltune zarr store (data prep's output); a store is a collection of them."""

    kind = "zarr"

    @classmethod
    def discover(cls, path: Path) -> tuple[list[SequenceSource], bool] | None:
        attrs = sf.store_attrs(path) if path.is_dir() else None
        if attrs is None:
            return None
        if attrs.get("complete") is not True:
            raise UserInputError(f"{path}: incomplete celltune store (data prep did not finish); rerun "
                                 f"`celltune data prep`")
        names = [str(s) for s in attrs.get("sequences") or []]
        if not names:
            raise UserInputError(f"{path}: the store holds no sequences")
        sources: list[SequenceSource] = []
        for name in names:
            try:
                digits = int(sf.sequence_attrs(path, name).get("frame_digits", 3))
            except KeyError:
                raise UserInputError(f"{path}: sequence {name!r} is listed but missing") from None
            sources.append(cls(name=name, path=path, digits=digits))
        return sources, True

    @property
    def where(self) -> str:
        return f"{self.path}/{self.name}"

    def probe(self) -> SequenceProbe:
        attrs = sf.sequence_attrs(self.path, self.name)
        return SequenceProbe(int(attrs["num_frames"]), tuple(attrs["frame_shape"]), np.dtype(attrs["dtype"]))

    def open(self) -> OpenedSequence:
        from celltune.data_prep.reader import SequenceReader

        reader = SequenceReader(self.path, self.name)
        return OpenedSequence(reader.num_frames, lambda t: reader.frame(sf.RAW, t), dict(reader.stats))


@dataclass(frozen=True)
class CtcSequence(SequenceSource):
    """A CTC sequence folder of ``tNNN.tif`` (or ``tNNNN.tif``) frames; a folder of them (a CTC dataset folder,
    whose ``01_GT`` and the like hold no frames and are skipped) is a collection."""

    frames: tuple[Path, ...] = ()  # frames[t] is tNNN.tif
    kind = "ctc"

    @classmethod
    def discover(cls, path: Path) -> tuple[list[SequenceSource], bool] | None:
        if not path.is_dir():
            return None
        found = cls._in_folder(path)
        if found is not None:
            return [found], False
        subs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        sources: list[SequenceSource] = [s for s in map(cls._in_folder, subs) if s is not None]
        return (sources, True) if sources else None

    @classmethod
    def _in_folder(cls, folder: Path) -> CtcSequence | None:
        found = _ctc_frames(folder)
        return None if found is None else cls(name=folder.name, path=folder, frames=found[0], digits=found[1])

    def frame_where(self, t: int) -> str:
        return str(self.frames[t])

    def probe(self) -> SequenceProbe:
        path = self.frames[0]
        shape, axes, dtype = _tiff_header(path)
        if any(a in "SC" and n > 1 for n, a in zip(shape, axes, strict=True)):
            raise UserInputError(f"{path}: multi-channel image (axes {axes}); expected one channel")
        frame = tuple(n for n in shape[:-2] if n != 1) + shape[-2:]
        if len(frame) not in (2, 3):
            raise UserInputError(f"{path}: image shape {shape}; expected a 2D frame or a 3D (Z, Y, X) stack")
        return SequenceProbe(len(self.frames), frame, dtype)

    def open(self) -> OpenedSequence:
        from celltune.data_prep.tiff_io import decode_tiff, read_bytes

        def read(t: int) -> np.ndarray:
            name = self.frame_where(t)
            return decode_tiff(read_bytes(self.frames[t], name), name)

        return OpenedSequence(len(self.frames), read)


# The formats discovery tries, in order (a new one goes here; see the module docstring): a store is a folder too,
# so it comes before the CTC folders.
INPUT_FORMATS: tuple[type[SequenceSource], ...] = (TiffStack, StoreSequence, CtcSequence)


# ------------------------------------------------------------------------------------------------ discovery


def find_sequences(path: Path) -> tuple[list[SequenceSource], bool]:
    """The sequences at ``path`` and whether it is a collection (results go to ``out/<seq>_RES``).

    ``path`` is a folder of ``tNNN.tif`` frames (one sequence), a ``.tif``/``.tiff`` file (a stack: one
    sequence), a celltune store (its sequences) or a folder whose sub-folders hold ``tNNN.tif`` frames
    (e.g. a CTC dataset folder with ``01/`` and ``02/``; ``01_GT`` and the like are skipped): the first of
    :data:`INPUT_FORMATS` that recognises it.

    Raises:
        UserInputError: a missing path, a folder with none of the above, gaps in frame numbers, an
            incomplete store.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: input not found")
    for input_format in INPUT_FORMATS:
        found = input_format.discover(path)
        if found is not None:
            return found
    if path.is_file():
        raise UserInputError(f"{path}: not a TIFF stack (.tif/.tiff), a CTC sequence folder or a celltune store")
    stray = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _TIFF_SUFFIXES)
    hint = f" ({stray[0]} is not named tNNN.tif)" if stray else ""
    raise UserInputError(f"{path}: no input frames: no tNNN.tif files and no sequence folders holding them{hint}")


def ctc_dataset_sources(data: Path, expected: str) -> list[SequenceSource]:
    """The sequences of CTC dataset folder ``data``.

    Raises:
        UserInputError: no such folder, or not a CTC dataset folder (``expected`` says what was looked for).
    """
    data = Path(data)
    if not data.is_dir():
        raise UserInputError(f"{data}: dataset folder not found")
    sources, collection = find_sequences(data)
    if not collection or not all(isinstance(s, CtcSequence) for s in sources):
        raise UserInputError(f"{data}: not a CTC dataset folder (expected {expected})")
    return sources


# ------------------------------------------------------------------------------------------------ reading


class SequenceFrames:
    """Frame-by-frame access to one sequence, checked for consistent shape and dtype."""

    def __init__(self, source: SequenceSource) -> None:
        self.source = source
        self._opened = source.open()
        self.num_frames = self._opened.num_frames
        self._first: tuple[tuple[int, ...], np.dtype, str] | None = None

    def stored_stats(self) -> dict[str, float] | None:
        """Statistics data prep already computed (zarr stores), else None."""
        return dict(self._opened.stats) if self._opened.stats is not None else None

    def read(self, t: int) -> np.ndarray:
        frame = self._opened.read(t)
        name = self.source.frame_where(t)
        if frame.dtype.kind not in "uif":
            raise UserInputError(f"{name}: dtype {frame.dtype}; expected integer or float intensities")
        if self._first is None:
            self._first = (frame.shape, frame.dtype, name)
        else:
            shape, dtype, first = self._first
            if frame.shape != shape:
                raise UserInputError(f"{name}: frame shape {frame.shape} differs from {first} {shape}")
            if frame.dtype != dtype:
                raise UserInputError(f"{name}: dtype {frame.dtype} differs from {first} ({dtype})")
        return frame


# ------------------------------------------------------------------------------------------------ TIFF helpers


def _ctc_frames(folder: Path) -> tuple[tuple[Path, ...], int] | None:
    """``(frames, digits)`` of the ``tNNN.tif`` files in ``folder``, None when there are none.

    Raises:
        UserInputError: mixed digit counts, a frame given twice, or a gap in the numbering.
    """
    by_t: dict[int, Path] = {}
    widths = set()
    for path in sorted(folder.iterdir()):
        match = _FRAME_RE.match(path.name)
        if not match:
            continue
        if not path.is_file():  # a frame that cannot be read must not be skipped: its mask would be missing
            what = "a folder" if path.is_dir() else "not a readable file (a broken or looping link?)"
            raise UserInputError(f"{path}: named like a frame but {what}")
        t = int(match.group(1))
        if t in by_t:
            raise UserInputError(f"{path}: frame {t} also in {by_t[t].name}")
        by_t[t] = path
        widths.add(len(match.group(1)))
    if not by_t:
        return None
    if len(widths) > 1:
        raise UserInputError(f"{folder}: frame file names mix 3 and 4 digits")
    digits = widths.pop()
    missing = next((t for t in range(len(by_t)) if t not in by_t), None)
    if missing is not None:
        raise UserInputError(f"{folder}: frames not contiguous from t{0:0{digits}d}: t{missing:0{digits}d}.tif "
                             f"missing ({len(by_t)} frames, last t{max(by_t):0{digits}d})")
    return tuple(by_t[t] for t in range(len(by_t))), digits


def _tiff_error(where: str, exc: BaseException) -> UserInputError:
    return UserInputError(f"{where}: unreadable TIFF ({' '.join(str(exc).split()) or type(exc).__name__})")


@contextlib.contextmanager
def _first_series(path: Path) -> Iterator[Any]:
    """The first image series of the TIFF at ``path``; whatever fails on a damaged file becomes one line."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise UserInputError(f"{path}: truncated or empty TIFF (no readable image)")
            yield tif.series[0]
    except UserInputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise _tiff_error(str(path), exc) from None


def _tiff_header(path: Path) -> tuple[tuple[int, ...], str, np.dtype]:
    """Shape, axes and dtype of the first series of the TIFF at ``path``, from its header."""
    with _first_series(path) as series:
        return tuple(series.shape), series.axes, np.dtype(series.dtype)


def _stack_layout(shape: tuple[int, ...], axes: str, where: str) -> tuple[tuple[int, ...], bool]:
    """How to view a TIFF stack's series as ``(T, Y, X)`` or ``(T, Z, Y, X)``: the series' shape without
    length-1 axes, and whether its two leading axes are ``Z, T`` (to be swapped)."""
    kept = [(n, a) for n, a in zip(shape, axes, strict=True) if n != 1 or a in "YX"]
    if any(a in "SC" for _, a in kept):
        raise UserInputError(f"{where}: multi-channel stack (axes {axes}); expected one channel")
    lead = [a for _, a in kept[:-2]]
    sizes = tuple(n for n, _ in kept)
    if len(lead) == 0:
        return (1, *sizes), False
    if len(lead) == 1:  # a plain page sequence (I, Q, T or Z in tifffile's naming) is a time series
        return sizes, False
    if len(lead) == 2 and set(lead) == {"T", "Z"}:
        return sizes, lead == ["Z", "T"]
    raise UserInputError(f"{where}: stack with axes {axes} {shape}; expected (T, Y, X) or (T, Z, Y, X)")


def _stack_shape(shape: tuple[int, ...], axes: str, where: str) -> tuple[int, ...]:
    """``(T, [Z,] Y, X)`` of a TIFF stack's series."""
    sizes, swap = _stack_layout(shape, axes, where)
    return (sizes[1], sizes[0], *sizes[2:]) if swap else sizes


def _read_stack(path: Path) -> np.ndarray:
    """A multi-page TIFF as ``(T, Y, X)`` or ``(T, Z, Y, X)``."""
    with _first_series(path) as series:
        sizes, swap = _stack_layout(tuple(series.shape), series.axes, str(path))
        data = series.asarray(maxworkers=1).reshape(sizes)
    return np.ascontiguousarray(np.swapaxes(data, 0, 1) if swap else data)
