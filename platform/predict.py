"""Predict CTC result folders (``maskNNN.tif`` + ``res_track.txt``) for new sequences with a trained model.

Input (see :func:`find_sequences`): a CTC sequence folder of ``tNNN.tif`` frames, a multi-page TIFF stack, a
celltune zarr store (every sequence in it), or a folder holding several sequence folders (a CTC dataset
folder with ``01/`` and ``02/``); frames are 2D ``(Y, X)`` or 3D ``(Z, Y, X)``. Each sequence is normalized
with its own intensity statistics as the model's description says (``normalization``: the same
:class:`~celltune.data_prep.stats.IntensityStats` data prep stores), predicted full-frame by
:func:`~celltune.trainables.inference.predict_probabilities` (3D frames slice by slice, then labelled with
3D connectivity), post-processed with the model's thresholds, tracked by
:func:`~celltune.platform.cell_tracker.track_sequence` and written by
:func:`~celltune.platform.ctc_results.write_ctc_result`.

Output: a single sequence (a sequence folder or a TIFF stack) is written to ``out`` itself; a collection (a
store or a folder of sequences) to ``out/<seq>_RES`` per sequence, the layout ``celltune evaluate`` reads.
Either way the output appears complete or not at all: results go into a hidden folder beside ``out`` that
is renamed into place at the end.

Several sequences run as one Ray task each (the weights travel once through the object store); the
driver writes what the tasks return, so workers need to read the input but never write to the driver's disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from celltune.data_prep import store_format as sf
from celltune.data_prep.errors import UserInputError
from celltune.data_prep.stats import IntensityStats
from celltune.platform.atomic_files import default_permissions
from celltune.platform.cell_tracker import TrackingResult, track_sequence
from celltune.platform.ctc_results import write_ctc_result

logger = logging.getLogger(__name__)

DEFAULT_MAX_TILE = 1024  # frames with a padded side above this are tiled (predict_probabilities' default)
DEFAULT_BATCH_SIZE = 4
RAW_CACHE_BYTES = 1 << 30  # decoded frames kept from the statistics pass for inference; re-read above this
TRACKING_KEYS = ("max_displacement", "min_overlap", "divisions", "spacing")
_FRAME_RE = re.compile(r"^t(\d{3,4})\.tiff?$")
_TIFF_SUFFIXES = (".tif", ".tiff")
# CTC dataset names carry the dimensionality: DIC-C2DH-HeLa, Fluo-N3DH-CE, PhC-C2DL-PSC, ...
_CTC_DIMS_RE = re.compile(r"^[CN]([23])D[HL]$")

SourceKind = Literal["ctc", "tiff", "zarr"]


# ------------------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class SequenceSource:
    """One input sequence, named but not read: a CTC folder, a TIFF stack or a sequence of a zarr store."""

    name: str  # "01", or the folder / file stem
    kind: SourceKind
    path: Path  # the sequence folder, the TIFF file or the store
    frames: tuple[Path, ...] = ()  # CTC: frames[t] is tNNN.tif
    digits: int = 3
    group: str | None = None  # zarr: the sequence group

    @property
    def where(self) -> str:
        """How messages name this sequence."""
        return f"{self.path}/{self.group}" if self.group is not None else str(self.path)


@dataclass(frozen=True)
class SequenceProbe:
    """What a sequence holds, from headers only: frame count, frame shape (2D or 3D) and dtype."""

    num_frames: int
    frame_shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.frame_shape)


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


def ctc_dataset_sources(data: Path, expected: str) -> list[SequenceSource]:
    """The sequences of CTC dataset folder ``data``.

    Raises:
        UserInputError: no such folder, or not a CTC dataset folder (``expected`` says what was looked for).
    """
    data = Path(data)
    if not data.is_dir():
        raise UserInputError(f"{data}: dataset folder not found")
    sources, collection = find_sequences(data)
    if not collection or any(s.kind != "ctc" for s in sources):
        raise UserInputError(f"{data}: not a CTC dataset folder (expected {expected})")
    return sources


def find_sequences(path: Path) -> tuple[list[SequenceSource], bool]:
    """The sequences at ``path`` and whether it is a collection (results go to ``out/<seq>_RES``).

    ``path`` is a folder of ``tNNN.tif`` frames (one sequence), a ``.tif``/``.tiff`` file (a stack: one
    sequence), a celltune store (its sequences) or a folder whose sub-folders hold ``tNNN.tif`` frames
    (e.g. a CTC dataset folder with ``01/`` and ``02/``; ``01_GT`` and the like are skipped).

    Raises:
        UserInputError: a missing path, a folder with none of the above, gaps in frame numbers, an
            incomplete store.
    """
    path = Path(path)
    if not path.exists():
        raise UserInputError(f"{path}: input not found")
    if path.is_file():
        if path.suffix.lower() not in _TIFF_SUFFIXES:
            raise UserInputError(f"{path}: not a TIFF stack (.tif/.tiff), a CTC sequence folder or a celltune store")
        return [SequenceSource(name=path.stem, kind="tiff", path=path)], False
    attrs = sf.store_attrs(path)
    if attrs is not None:
        if attrs.get("complete") is not True:
            raise UserInputError(f"{path}: incomplete celltune store (data prep did not finish); rerun "
                                 f"`celltune data prep`")
        names = [str(s) for s in attrs.get("sequences") or []]
        if not names:
            raise UserInputError(f"{path}: the store holds no sequences")
        sources = []
        for name in names:
            try:
                digits = int(sf.sequence_attrs(path, name).get("frame_digits", 3))
            except KeyError:
                raise UserInputError(f"{path}: sequence {name!r} is listed but missing") from None
            sources.append(SequenceSource(name=name, kind="zarr", path=path, digits=digits, group=name))
        return sources, True
    found = _ctc_frames(path)
    if found is not None:
        return [SequenceSource(name=path.name, kind="ctc", path=path, frames=found[0], digits=found[1])], False
    sources = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = _ctc_frames(sub)
        if found is not None:
            sources.append(SequenceSource(name=sub.name, kind="ctc", path=sub, frames=found[0], digits=found[1]))
    if not sources:
        stray = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _TIFF_SUFFIXES)
        hint = f" ({stray[0]} is not named tNNN.tif)" if stray else ""
        raise UserInputError(f"{path}: no input frames: no tNNN.tif files and no sequence folders holding them"
                             f"{hint}")
    return sources, True


def _tiff_error(where: str, exc: BaseException) -> UserInputError:
    return UserInputError(f"{where}: unreadable TIFF ({' '.join(str(exc).split()) or type(exc).__name__})")


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
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise UserInputError(f"{path}: truncated or empty TIFF (no readable image)")
            series = tif.series[0]
            sizes, swap = _stack_layout(tuple(series.shape), series.axes, str(path))
            data = series.asarray(maxworkers=1).reshape(sizes)
    except UserInputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise _tiff_error(str(path), exc) from None
    return np.ascontiguousarray(np.swapaxes(data, 0, 1) if swap else data)


def probe_sequence(source: SequenceSource) -> SequenceProbe:
    """Frame count, shape and dtype from headers (the first frame's, for a CTC folder).

    Raises:
        UserInputError: an unreadable first frame or stack, or a multi-channel image.
    """
    import tifffile

    if source.kind == "zarr":
        attrs = sf.sequence_attrs(source.path, source.group or "")
        return SequenceProbe(int(attrs["num_frames"]), tuple(attrs["frame_shape"]), np.dtype(attrs["dtype"]))
    path = source.frames[0] if source.kind == "ctc" else source.path
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise UserInputError(f"{path}: truncated or empty TIFF (no readable image)")
            series = tif.series[0]
            shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
    except UserInputError:
        raise
    except Exception as exc:
        raise _tiff_error(str(path), exc) from None
    if source.kind == "tiff":
        stack = _stack_shape(shape, axes, str(path))
        return SequenceProbe(stack[0], stack[1:], dtype)
    if any(a in "SC" and n > 1 for n, a in zip(shape, axes, strict=True)):
        raise UserInputError(f"{path}: multi-channel image (axes {axes}); expected one channel")
    frame = tuple(n for n in shape[:-2] if n != 1) + shape[-2:]
    if len(frame) not in (2, 3):
        raise UserInputError(f"{path}: image shape {shape}; expected a 2D frame or a 3D (Z, Y, X) stack")
    return SequenceProbe(len(source.frames), frame, dtype)


class SequenceFrames:
    """Frame-by-frame access to one sequence, checked for consistent shape and dtype."""

    def __init__(self, source: SequenceSource) -> None:
        self.source = source
        self._stack: np.ndarray | None = None
        self._reader = None
        if source.kind == "tiff":
            self._stack = _read_stack(source.path)
            self.num_frames = len(self._stack)
        elif source.kind == "zarr":
            from celltune.data_prep.reader import SequenceReader

            self._reader = SequenceReader(source.path, source.group or "")
            self.num_frames = self._reader.num_frames
        else:
            self.num_frames = len(source.frames)
        self._first: tuple[tuple[int, ...], np.dtype, str] | None = None

    def stored_stats(self) -> dict[str, float] | None:
        """Statistics data prep already computed (zarr stores), else None."""
        return dict(self._reader.stats) if self._reader is not None else None

    def read(self, t: int) -> np.ndarray:
        if self._stack is not None:
            frame = self._stack[t]
            name = f"{self.source.path}[{t}]"
        elif self._reader is not None:
            frame = self._reader.frame(sf.RAW, t)
            name = f"{self.source.where}[{t}]"
        else:
            from celltune.data_prep.tiff_io import decode_tiff, read_bytes

            path = self.source.frames[t]
            name = str(path)
            frame = decode_tiff(read_bytes(path, name), name)
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


def sequence_stats(frames: SequenceFrames) -> dict[str, float]:
    """The sequence's intensity statistics (normalization input): data prep's when stored, else computed over
    every frame exactly as data prep does."""
    stored = frames.stored_stats()
    if stored is not None:
        return stored
    if frames.num_frames == 0:
        raise UserInputError(f"{frames.source.where}: no frames")
    accumulator: IntensityStats | None = None
    for t in range(frames.num_frames):
        frame = frames.read(t)
        accumulator = accumulator or IntensityStats(frame.dtype)
        accumulator.add(frame)
    return accumulator.result()


# ------------------------------------------------------------------------------------------------ model contract


def model_ndims(description: Mapping[str, Any]) -> frozenset[int] | None:
    """Frame dimensionalities (2 and/or 3) the model was trained on, or None when that cannot be told.

    Read from the training stores' attributes when they are still there, else from CTC dataset names
    (``Fluo-N3DH-CE`` is 3D); one dataset of unknown dimensionality makes the answer None.
    """
    stores = ((description.get("train_config") or {}).get("data") or {}).get("stores") or []
    dims: set[int] = set()
    for store in stores:
        attrs = sf.store_attrs(store) or {}
        if attrs.get("ndim") in (2, 3):
            dims.add(int(attrs["ndim"]))
            continue
        name = Path(str(store)).name.removesuffix(sf.STORE_SUFFIX)
        found = {int(m.group(1)) for part in name.split("-") if (m := _CTC_DIMS_RE.match(part))}
        if len(found) != 1:
            return None
        dims |= found
    return frozenset(dims) or None


def check_model_fits(description: Mapping[str, Any], ndim: int, where: str, uri: str = "the model") -> None:
    """Refuse a model trained only on 3D data for 2D frames and vice versa.

    Raises:
        UserInputError: the model's training data has another dimensionality than the input.
    """
    dims = model_ndims(description)
    if dims is not None and ndim not in dims:
        trained = " and ".join(f"{d}D" for d in sorted(dims))
        raise UserInputError(f"{where}: {ndim}D frames, but {uri} was trained on {trained} data only")


def checked_postprocess_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Thresholds checked up front (names and values), so a typo fails before any inference."""
    from celltune.trainables.postprocess import DEFAULT_POSTPROCESS_PARAMS, postprocess
    from celltune.trainables.registry import OUT_CHANNELS

    if kind not in DEFAULT_POSTPROCESS_PARAMS:
        raise UserInputError(f"model target_kind={kind!r}: unknown; expected one of "
                             f"{', '.join(sorted(DEFAULT_POSTPROCESS_PARAMS))}")
    postprocess(kind, np.zeros((OUT_CHANNELS[kind], 4, 4), np.float32), **params)
    return dict(params)


def time_window_of(model) -> int:
    """Frames per input window: 1 for single-frame models, T for temporal ones (``spec.time_window``)."""
    return int(getattr(getattr(model, "spec", None), "time_window", 1) or 1)


def _check_time_window(model, ndim: int, where: str, tta: bool = False) -> None:
    """Temporal models slide over 2D sequences; their windows of 3D volumes are not defined, nor is TTA."""
    if time_window_of(model) > 1 and ndim != 2:
        raise UserInputError(f"{where}: the model sees windows of {time_window_of(model)} 2D frames; "
                             f"this sequence has {ndim}D frames")
    if time_window_of(model) > 1 and tta:
        raise UserInputError(f"{where}: --tta averages single frames; the model sees windows of "
                             f"{time_window_of(model)} frames")


def _tracking_check(params: Mapping[str, Any], ndim: int) -> dict[str, Any]:
    unknown = sorted(set(params) - set(TRACKING_KEYS))
    if unknown:
        raise UserInputError(f"tracking: unknown parameter {unknown[0]!r}; allowed: {', '.join(TRACKING_KEYS)}")
    track_sequence([np.zeros((2,) * ndim, np.int32)], **params)  # checks every value
    return dict(params)


# ------------------------------------------------------------------------------------------------ one sequence


@dataclass(frozen=True)
class PredictOptions:
    """How to run the network and the tracker (model-independent settings).

    Attributes:
        device: ``"cpu"``, ``"cuda"``, ... (checked by ``resolve_device``).
        max_tile: tile frames whose padded side exceeds this (None: never tile); a small value forces tiling.
        batch_size: frames (or tiles) per forward pass.
        track: link instances into tracks; False writes each frame's objects as one-frame tracks.
        tracking: keyword arguments of :func:`~celltune.platform.cell_tracker.track_sequence`.
        amp: mixed precision (None: on for CUDA only).
        scale: resample frames by this factor for the network (None: the model's own, see :func:`model_scale`).
        tta: average the probabilities over the 8 flips and quarter turns (:mod:`celltune.trainables.tta`).
    """

    device: str = "cpu"
    max_tile: int | None = DEFAULT_MAX_TILE
    batch_size: int = DEFAULT_BATCH_SIZE
    track: bool = True
    tracking: Mapping[str, Any] = field(default_factory=dict)
    amp: bool | None = None
    scale: float | None = None
    tta: bool = False


def model_scale(description: Mapping[str, Any], dataset: str | None = None) -> float:
    """The resampling factor the model was trained at for ``dataset`` (``data.scale``; 1 for older models).

    Without a dataset, the one factor all its datasets share.

    Raises:
        UserInputError: the datasets were trained at different factors and none (or an unknown one) is named.
    """
    scales = {name: float(value) for name, value in (description.get("scale") or {}).items()}
    if not scales:
        return 1.0
    if dataset in scales:
        return scales[dataset]
    if len(set(scales.values())) == 1:
        return next(iter(scales.values()))
    named = f"dataset {dataset!r} is not one of them" if dataset else "no dataset named"
    listed = ", ".join(f"{name}: {value:g}" for name, value in scales.items())
    raise UserInputError(f"the model was trained at a scale per dataset ({listed}) and {named}: pass --dataset NAME "
                         f"or --scale FACTOR")


@dataclass(frozen=True)
class SequenceOutcome:
    """One predicted sequence: its tracked masks and what it took."""

    name: str
    result: TrackingResult
    digits: int
    cells: int  # instances summed over frames
    seconds: float
    timings: dict[str, float]  # read, inference, postprocess, tracking (seconds)

    @property
    def frames(self) -> int:
        return len(self.result.masks)

    @property
    def tracks(self) -> int:
        return len(self.result.tracks)

    @property
    def divisions(self) -> int:
        return self.result.num_divisions


def frames_as_tracks(labels: Sequence[np.ndarray]) -> TrackingResult:
    """Each frame's objects as tracks of one frame (ids shifted to be unique across frames): a result
    folder that passes the CTC checks without linking anything."""
    out = np.zeros((len(labels), *labels[0].shape), dtype=np.int32)
    rows = []
    offset = 0
    for t, frame in enumerate(labels):
        ids = np.unique(frame)
        ids = ids[ids > 0]
        lut = np.zeros(int(frame.max()) + 1 if frame.size else 1, dtype=np.int32)
        lut[ids] = np.arange(offset + 1, offset + ids.size + 1, dtype=np.int32)
        out[t] = lut[frame]
        rows.extend([offset + k, t, t, 0] for k in range(1, ids.size + 1))
        offset += ids.size
    return TrackingResult(masks=out, tracks=np.array(rows, dtype=np.int64).reshape(-1, 4))


def frame_probabilities(model, description: Mapping[str, Any], images: Sequence[np.ndarray], *, scale: float,
                        options: PredictOptions) -> list[np.ndarray]:
    """Per-class probabilities ``(C, Y, X)`` or ``(C, Z, Y, X)`` of normalized single frames (2D) or volumes (3D,
    their z-slices through the 2D network) for a single-frame model."""
    from celltune.trainables.inference import activation_for, predict_probabilities
    from celltune.trainables.tta import DIHEDRAL, with_tta

    settings = {"size_multiple": int(description["model"]["size_multiple"]),
                "activation": activation_for(description["model"]["target_kind"]), "device": options.device,
                "amp": options.amp, "batch_size": options.batch_size, "max_tile": options.max_tile, "scale": scale}

    def predict(frames: np.ndarray) -> np.ndarray:
        plain = lambda x: predict_probabilities(model, x, **settings)  # noqa: E731
        return with_tta(plain, frames, DIHEDRAL) if options.tta else plain(frames)

    if images[0].ndim == 2:
        return list(predict(np.stack(images)))
    return [np.moveaxis(predict(image), 1, 0) for image in images]


def iter_predict_sequence(
    model,
    description: Mapping[str, Any],
    postprocess_params: Mapping[str, Any],
    source: SequenceSource,
    options: PredictOptions = PredictOptions(),
) -> Iterator[tuple[str, Any]]:
    """Predict one sequence, yielding ``("read", n)`` and ``("predict", n)`` after every n frames, then
    ``("done", SequenceOutcome)``; a generator so a Ray task can stream progress without threads.

    See :func:`predict_sequence` for the arguments.
    """
    from celltune.trainables.data import NORMALIZATIONS, normalize
    from celltune.trainables.inference import activation_for
    from celltune.trainables.postprocess import postprocess
    from celltune.trainables.temporal_inference import predict_sequence_probabilities

    started = time.perf_counter()
    kind = description["model"]["target_kind"]
    size_multiple = int(description["model"]["size_multiple"])
    method = description.get("normalization", "minmax")
    if method not in NORMALIZATIONS:
        raise UserInputError(f"model description: normalization={method!r}; expected one of "
                             f"{', '.join(NORMALIZATIONS)}")
    params = checked_postprocess_params(kind, postprocess_params)
    scale = options.scale if options.scale is not None else model_scale(description)
    time_window = time_window_of(model)
    previous: np.ndarray | None = None  # the frames before this batch, for temporal models' windows
    activation = activation_for(kind)
    timings = {"read": 0.0, "inference": 0.0, "postprocess": 0.0, "tracking": 0.0}

    frames = SequenceFrames(source)
    cache: dict[int, np.ndarray] = {}  # frames decoded for the statistics, kept for inference up to a budget
    stats = frames.stored_stats()
    if stats is None:  # computed exactly as data prep does, frame by frame
        accumulator: IntensityStats | None = None
        kept = 0
        for t in range(frames.num_frames):
            clock = time.perf_counter()
            frame = frames.read(t)
            if accumulator is None:
                accumulator = IntensityStats(frame.dtype)
            accumulator.add(frame)
            if kept + frame.nbytes <= RAW_CACHE_BYTES:
                cache[t] = frame
                kept += frame.nbytes
            timings["read"] += time.perf_counter() - clock
            yield ("read", 1)
        if accumulator is None:
            raise UserInputError(f"{source.where}: no frames")
        stats = accumulator.result()
    tracking = None
    labels: list[np.ndarray] = []
    cells = 0
    step = max(1, options.batch_size)
    for first in range(0, frames.num_frames, step):
        clock = time.perf_counter()
        last = min(first + step, frames.num_frames)
        raw = [cache.pop(t) if t in cache else frames.read(t) for t in range(first, last)]
        if tracking is None:
            check_model_fits(description, raw[0].ndim, source.where)
            _check_time_window(model, raw[0].ndim, source.where, options.tta)
            tracking = _tracking_check(options.tracking, raw[0].ndim) if options.track else {}
        images = [normalize(frame, stats, method) for frame in raw]
        timings["read"] += time.perf_counter() - clock
        clock = time.perf_counter()
        if time_window > 1:  # every frame from its sliding window, carried across batches
            batch = np.stack(images)
            probs = list(predict_sequence_probabilities(
                model, batch, time_window=time_window, previous=previous, size_multiple=size_multiple,
                activation=activation, device=options.device, amp=options.amp, batch_size=options.batch_size,
                max_tile=options.max_tile))
            previous = (batch if previous is None else np.concatenate([previous, batch]))[-(time_window - 1):]
        else:
            probs = frame_probabilities(model, description, images, scale=scale, options=options)
        timings["inference"] += time.perf_counter() - clock
        clock = time.perf_counter()
        for p in probs:
            frame_labels = postprocess(kind, p, **params)
            cells += int(frame_labels.max()) if frame_labels.size else 0
            labels.append(frame_labels)
        timings["postprocess"] += time.perf_counter() - clock
        yield ("predict", len(raw))
    clock = time.perf_counter()
    result = track_sequence(labels, **(tracking or {})) if options.track else frames_as_tracks(labels)
    timings["tracking"] = time.perf_counter() - clock
    yield ("done", SequenceOutcome(name=source.name, result=result, digits=source.digits, cells=cells,
                                   seconds=time.perf_counter() - started, timings=timings))


def predict_sequence(
    model,
    description: Mapping[str, Any],
    postprocess_params: Mapping[str, Any],
    source: SequenceSource,
    options: PredictOptions = PredictOptions(),
    *,
    show_progress: bool = False,
) -> SequenceOutcome:
    """Segment and track one sequence in this process.

    Args:
        model: the network (e.g. ``LoadedModel.model``), mapping ``(B, 1, H, W)`` to logits.
        description: the model's ``celltune_model.json`` (``model.target_kind``, ``model.size_multiple``,
            ``normalization``, ``train_config``).
        postprocess_params: thresholds for the target kind (e.g. ``LoadedModel.postprocess_params(dataset)``);
            unset ones use the package defaults.
        source: the sequence (see :func:`find_sequences`).
        options: device, tiling, batching and tracking settings.
        show_progress: tqdm bars over frames (reading for statistics, then predicting, with an ETA).

    Raises:
        UserInputError: unreadable or inconsistent frames, a model trained on other dimensions, bad
            thresholds or tracking parameters.
    """
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}
    total = None
    with contextlib.suppress(UserInputError, KeyError):
        total = probe_sequence(source).num_frames
    try:
        for event, payload in iter_predict_sequence(model, description, postprocess_params, source, options):
            if event == "done":
                return payload
            if event not in bars:
                verb = "reading" if event == "read" else "predicting"
                bars[event] = tqdm(total=total, desc=f"{verb} {source.name}", unit="frame",
                                   disable=None if show_progress else True, dynamic_ncols=True)
            bars[event].update(payload)
    finally:
        for bar in bars.values():
            bar.close()
    raise RuntimeError(f"internal error: prediction of {source.where} ended without a result")


# ------------------------------------------------------------------------------------------------ many sequences


@dataclass(frozen=True)
class SequenceSummary:
    """What the CLI prints per sequence."""

    name: str
    folder: Path
    frames: int
    cells: int
    tracks: int
    divisions: int
    seconds: float
    timings: dict[str, float]

    def line(self, folder: bool = True) -> str:
        per_frame = self.cells / self.frames if self.frames else 0.0
        text = (f"{self.name}: {self.frames} frames, {self.cells} cells ({per_frame:.1f}/frame), "
                f"{self.tracks} tracks, {self.divisions} divisions, {self.seconds:.1f} s")
        return f"{text} -> {self.folder}" if folder else text


def _result_name(source: SequenceSource) -> str:
    return f"{source.name}_RES"


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty output folder (or a file) unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"{out}: output folder exists and is not empty (pass --overwrite to replace it)")


def _predict_task(weights, model_config: dict, description: dict, params: dict, source: SequenceSource,
                  options: PredictOptions) -> Iterator[tuple[str, Any]]:
    """Ray generator task: rebuild the network, load the shared weights, stream progress and the outcome.

    A UserInputError becomes ``("error", message)`` so the driver raises the same one line.
    """
    from celltune.trainables.registry import model_from_config

    try:
        model = model_from_config(model_config)
        model.load_state_dict(weights)
        yield from iter_predict_sequence(model.eval(), description, params, source, options)
    except UserInputError as exc:
        yield ("error", str(exc))


def _run_in_ray(model, description: Mapping[str, Any], params: Mapping[str, Any], sources: list[SequenceSource],
                options: PredictOptions, bar, on_done: Callable[[SequenceOutcome], None]) -> None:
    import ray

    from celltune.data_prep.ray_session import task_events

    gpus = 1 if str(options.device).startswith("cuda") else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_predict_task)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    weights = ray.put(state)
    config = dict(description["model"])
    running = {task.remote(weights, config, dict(description), dict(params), s, options): s for s in sources}
    try:
        for gen, _, event, payload in task_events(running, lambda source: f"predicting {source.where}"):
            if event == "error":
                raise UserInputError(payload)
            if event == "predict":
                bar.update(payload)
            elif event == "done":
                del running[gen]
                on_done(payload)
                bar.set_postfix_str(f"{len(sources) - len(running)}/{len(sources)} sequences", refresh=False)
    finally:
        for gen in running:
            with contextlib.suppress(Exception):
                ray.cancel(gen)


def predict_to_folder(
    model,
    description: Mapping[str, Any],
    postprocess_params: Mapping[str, Any],
    input_path: Path,
    out: Path,
    options: PredictOptions = PredictOptions(),
    *,
    sources: list[SequenceSource] | None = None,
    collection: bool | None = None,
    use_ray: bool | None = None,
    address: str | None = None,
    overwrite: bool = False,
    model_uri: str = "the model",
    show_progress: bool = True,
    on_sequence: Callable[[SequenceSummary], None] | None = None,
) -> list[SequenceSummary]:
    """Predict every sequence at ``input_path`` and write CTC result folders under ``out``, atomically.

    Args:
        model, description, postprocess_params, options: see :func:`predict_sequence`.
        input_path: see :func:`find_sequences`.
        out: result folder (one sequence) or folder of ``<seq>_RES`` folders (a collection).
        sources, collection: the sequences and layout to use instead of discovering them at ``input_path``.
        use_ray: one Ray task per sequence; None = when there are 2+ sequences or ``address`` is given.
        address: Ray cluster address (default: a local Ray).
        overwrite: replace an existing non-empty ``out``.
        model_uri: how messages name the model.
        show_progress: a tqdm bar over all frames with an ETA.
        on_sequence: called with each sequence's summary once it is written (in completion order).

    Returns:
        One summary per sequence, in input order.

    Raises:
        UserInputError: bad input (see :func:`find_sequences`, :func:`predict_sequence`), a model that does
            not fit the input's dimensionality, or an existing non-empty ``out`` without ``overwrite``.
    """
    from tqdm.auto import tqdm

    from celltune.trainables.inference import resolve_device

    out = Path(out)
    check_output(out, overwrite)
    if sources is None:
        sources, collection = find_sequences(input_path)
    elif collection is None:
        collection = len(sources) > 1
    target = out.resolve()
    for path in {Path(input_path), *(s.path for s in sources)}:
        if path.resolve() == target or target in path.resolve().parents:
            raise UserInputError(f"{out}: the output folder holds the input {path}; choose another --out")
    if not collection and len(sources) != 1:
        raise ValueError("a single-sequence layout needs exactly one source")
    resolve_device(options.device)
    probes = {s.name: probe_sequence(s) for s in sources}
    for source in sources:  # everything checkable before any inference
        check_model_fits(description, probes[source.name].ndim, source.where, model_uri)
        _check_time_window(model, probes[source.name].ndim, source.where, options.tta)
        if options.track:
            _tracking_check(options.tracking, probes[source.name].ndim)
    checked_postprocess_params(description["model"]["target_kind"], postprocess_params)
    if use_ray is None:
        use_ray = len(sources) > 1 or address is not None

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(out)
    staging = default_permissions(Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent)))
    summaries: dict[str, SequenceSummary] = {}
    total = sum(p.num_frames for p in probes.values())

    def write(outcome: SequenceOutcome) -> None:
        folder = staging / (_result_name(by_name[outcome.name]) if collection else "result")
        write_ctc_result(folder, outcome.result.masks, outcome.result.tracks, digits=outcome.digits)
        final = out / folder.name if collection else out
        summary = SequenceSummary(outcome.name, final, outcome.frames, outcome.cells, outcome.tracks,
                                  outcome.divisions, outcome.seconds, outcome.timings)
        summaries[outcome.name] = summary
        logger.info("%s", summary.line())
        if on_sequence is not None:
            on_sequence(summary)

    by_name = {s.name: s for s in sources}
    try:
        if use_ray:  # before the progress bar, whose ETA should not include Ray's start
            from celltune.data_prep.ray_session import ensure_ray

            ensure_ray(address)
        with tqdm(total=total, desc="predicting", unit="frame", disable=None if show_progress else True,
                  dynamic_ncols=True) as bar:
            if use_ray:
                _run_in_ray(model, description, postprocess_params, sources, options, bar, write)
            else:
                for source in sources:
                    bar.set_postfix_str(source.name, refresh=False)
                    for event, payload in iter_predict_sequence(model, description, postprocess_params, source,
                                                                options):
                        if event == "predict":
                            bar.set_postfix_str(source.name, refresh=False)
                            bar.update(payload)
                        elif event == "read":
                            bar.set_postfix_str(f"{source.name}: reading", refresh=False)
                        elif event == "done":
                            write(payload)
        produced = staging if collection else staging / "result"
        _replace(produced, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [summaries[s.name] for s in sources]


_STAGING_PID = re.compile(r"\.tmp-(\d+)-")


def remove_abandoned_staging(out: Path) -> list[Path]:
    """Remove the hidden staging folders of earlier predictions into ``out`` whose process is gone (a killed
    run cannot clean up after itself); folders of a live process, or of unknown owner, are left alone."""
    removed = []
    for folder in out.parent.glob(f".{out.name}.tmp-*"):
        match = _STAGING_PID.search(folder.name[len(out.name) + 1:])
        if match is None or not folder.is_dir() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("removed %s, left by an interrupted prediction", folder)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _replace(produced: Path, out: Path) -> None:
    """Put ``produced`` at ``out`` in one rename; an existing ``out`` (overwrite was checked) is removed after."""
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(produced, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
