"""Training and validation data from celltune stores: one endless random-crop stream per dataset.

Each stream is a ``DataLoader`` over an ``IterableDataset`` that draws a frame of this rank's shard, a crop of
it (placed uniformly, or with probability ``foreground_p`` centred on a random annotated pixel so sparse
datasets do not feed mostly empty crops; the loss region plus ``margin`` pixels of real context,
reflection-padded where the frame ends), an optional rotation by any angle and elastic deformation (see
:mod:`celltune.trainables.augment`), one of the six flips/rotations, optional noise and intensity jitter, and
the target arrays for the model's target kind. Models with a time window get the ``time_window`` frames ending
at the target frame (the first frame repeated before the sequence starts), all with the same crop and
augmentation, as an image of shape ``(T, 1, h, w)``. Stores are opened lazily by
:class:`~celltune.data_prep.reader.SequenceReader` inside whichever process reads (zarr 3's event-loop thread
must not cross a fork), and each loader worker seeds its own generator from (seed, rank, worker id), so runs
are reproducible.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from celltune.data_prep import store_format
from celltune.data_prep.common import UserInputError
from celltune.data_prep.index import frames_for, load_index
from celltune.data_prep.reader import SequenceReader
from celltune.data_prep.targets import TERTIARY_BOUNDARY
from celltune.trainables import resample
from celltune.trainables.augment import Warp, add_noise, apply_warp, sample_warp
from celltune.trainables.config import AugmentConfig, DataConfig
from celltune.trainables.losses import edge_distance_weights
from celltune.trainables.schemes import POOLED
from celltune.trainables.target_kinds import TARGET_KINDS

logger = logging.getLogger(__name__)

CACHE_BYTES_PER_SEQUENCE = 2 * 1024**3
# Foreground positions are kept per frame on a grid of at most this many points (a stride of 4 px for 512x512,
# 8 px for 1024x1024), so the cache stays small and a centre is still within a few pixels of any cell.
FOREGROUND_GRID_POINTS = 2**14


@dataclass(frozen=True)
class FrameRef:
    """One training or validation unit: a 2D frame, or one z-slice of a 3D frame (``z`` is None in 2D)."""

    dataset: str
    store: str
    sequence: str
    t: int
    z: int | None
    source: str  # "gt" or "st": which annotation's labels and targets belong to this unit


@dataclass(frozen=True)
class ValidationFrame:
    raw: np.ndarray  # (H, W) as stored, for pictures
    image: np.ndarray  # (H, W) float32, normalized as in training
    labels: np.ndarray  # (H, W) reference instances
    window: np.ndarray | None = None  # (T, H, W) normalized frames ending at this one, for time-window models


NORMALIZATIONS = ("minmax", "percentile", "log")


def normalize(image: np.ndarray, stats: Mapping[str, float], method: str) -> np.ndarray:
    """Per-sequence normalization to [0, 1]: min-max (XB-Net), 1%-99% percentile clipping (U-SE-ResNet), or
    ``log``: log(1 + x - min) / log(1 + max - min), which lifts dim cells of a wide dynamic range (GOWT1's
    annotated nuclei sit at 5 of 255 beside nuclei at 200) without clipping the bright ones."""
    if method == "log":
        low, high = float(stats["min"]), float(stats["max"])
        shifted = np.maximum(image.astype(np.float32) - np.float32(low), 0.0)
        return np.log1p(shifted) / np.float32(np.log1p(max(high - low, 1e-6)))
    low, high = (stats["min"], stats["max"]) if method == "minmax" else (stats["p1"], stats["p99"])
    scale = max(float(high) - float(low), 1e-6)
    out = (image.astype(np.float32) - np.float32(low)) / np.float32(scale)
    return np.clip(out, 0.0, 1.0) if method == "percentile" else out


def dataset_frames(store: Path, config: str, split: str) -> list[FrameRef]:
    """The frames of ``store`` in ``split`` of data configuration ``config``, from the folder's index."""
    store = Path(store)
    attrs = store_format.store_attrs(store)
    if attrs is None or not attrs.get("complete"):
        raise UserInputError(f"{store}: not a complete celltune store (run `celltune data prep`)")
    dataset = attrs["dataset"]
    rows = frames_for(load_index(store.parent), config, split, dataset).to_pylist()
    return [FrameRef(dataset, str(store), row["sequence"], int(row["t"]), None if row["z"] < 0 else int(row["z"]),
                     row["source"]) for row in rows]


def training_frames(store: Path, data: DataConfig) -> list[FrameRef]:
    """The frames ``store`` trains on under ``data``: its training split, cut to ``data.train_frames`` of them.

    Raises:
        UserInputError: no training frames, or fewer than ``train_frames`` asks for.
    """
    name = Path(store).name.removesuffix(".zarr")
    frames = dataset_frames(Path(store), data.configuration, "train")
    if not frames:
        raise UserInputError(f"{store}: no training frames in data configuration {data.configuration!r}")
    wanted = data.train_frames_for(name)
    if wanted is None:
        return frames
    if wanted > len(frames):
        raise UserInputError(f"data.train_frames: {wanted} frames of {name} asked for, but {store} has only "
                             f"{len(frames)} training frames in data configuration {data.configuration!r}")
    return evenly_spread(frames, wanted)


def check_crop_fits(store: Path, data: DataConfig) -> None:
    """Refuse a crop larger than every (resampled) training frame of ``store`` in both sides: each crop would
    be mostly padding and every step would grind on it. A crop larger than only some frames is logged.

    Raises:
        UserInputError: the crop exceeds every frame.
    """
    name = Path(store).name.removesuffix(".zarr")
    crop = data.crop_for(name)
    if crop == "short_side":
        return
    scale = data.scale_for(name)
    shapes = {tuple(resample.scaled_side(side, scale) for side in SequenceReader(store, sequence).frame_shape[-2:])
              for sequence in sorted({frame.sequence for frame in training_frames(Path(store), data)})}
    largest = max(shapes, key=max)
    if all(crop > max(shape) for shape in shapes):
        at = f" at scale {scale:g}" if scale != 1 else ""
        raise UserInputError(f"data.crop {crop} for {name}: larger than every training frame (the largest is "
                             f"{largest[0]}x{largest[1]}{at}); use at most {max(largest)} or short_side")
    if any(crop > min(shape) for shape in shapes):
        logger.warning("data.crop %d for %s: larger than some frames (%s); those crops are padded", crop, name,
                       ", ".join(f"{h}x{w}" for h, w in sorted(shapes)))


def evenly_spread(items: Sequence[Any], count: int) -> list[Any]:
    """``count`` of ``items`` at evenly spaced positions (the centre of each of ``count`` equal parts), so a
    few frames still cover the sequences and the time course rather than the first minutes of one movie."""
    return [items[int((i + 0.5) * len(items) / count)] for i in range(count)]


def crop_size_for(crop: int | str, frames: list[FrameRef], readers: Mapping[tuple[str, str], SequenceReader],
                  size_multiple: int, scale: float = 1.0) -> int:
    """``short_side``: the smallest (resampled) frame side of the dataset, rounded down to the size multiple."""
    if crop != "short_side":
        return int(crop)
    short = min(resample.scaled_side(min(readers[(f.store, f.sequence)].frame_shape[-2:]), scale) for f in frames)
    return max(size_multiple, short // size_multiple * size_multiple)


class RandomCrops(IterableDataset):
    """Endless augmented random crops from a list of frames (one dataset, or all of them for ``mix``).

    Args:
        frames: the frames to draw from.
        crop: side of the loss region in pixels.
        margin: context pixels read on every side of the loss region (the crop is ``crop + 2 * margin``).
        target_kind: "tertiary", "mask_marker" or "binary": which target arrays to read.
        weights: also yield the loss's pixel weight map.
        normalization: "minmax" or "percentile" (see :func:`normalize`).
        augment: which augmentations to draw.
        seed: seed of this stream (each loader worker adds its id).
        cache_bytes: per-sequence RAM cache of decoded frames.
        foreground_p: probability that a crop is centred on a random annotated pixel of its frame (0: uniform).
        time_window: frames per sample; above 1 the image is ``(T, 1, h, w)``, the target frame last.
        scale: resampling factor of this stream's frames (see :mod:`celltune.trainables.resample`): the crop and
            margin are in resampled pixels, read from ``1 / scale`` times as many original pixels.
        ignore_unannotated: also yield ``valid``, a mask that is 0 around cells that GT TRA marks but GT SEG leaves
            unannotated (sparse GT such as Fluo-N2DH-GOWT1's), so the loss does not teach them as background.
    """

    def __init__(self, frames: list[FrameRef], *, crop: int, margin: int, target_kind: str, weights: bool,
                 normalization: str, augment: AugmentConfig, seed: int, cache_bytes: int = 0,
                 foreground_p: float = 0.0, time_window: int = 1, scale: float = 1.0,
                 ignore_unannotated: bool = False) -> None:
        super().__init__()
        if not frames:
            raise UserInputError("a training stream has no frames")
        if not 0.0 <= foreground_p <= 1.0:
            raise UserInputError(f"foreground_crop_p={foreground_p}: must lie in [0, 1]")
        if isinstance(time_window, bool) or not isinstance(time_window, int) or time_window < 1:
            raise UserInputError(f"time_window={time_window!r}: must be an integer >= 1")
        self.frames = frames
        self.crop = crop
        self.margin = margin
        self.target_kind = target_kind
        self.weights = weights
        self.normalization = normalization
        self.augment = augment
        self.seed = seed
        self.cache_bytes = cache_bytes
        self.foreground_p = foreground_p
        self.time_window = time_window
        self.scale = float(scale)
        self.ignore_unannotated = ignore_unannotated
        self._unannotated: dict[FrameRef, np.ndarray | None] = {}
        self._readers: dict[tuple[str, str], SequenceReader] = {}
        self._foreground: dict[FrameRef, tuple[int, np.ndarray]] = {}

    def _reader(self, frame: FrameRef) -> SequenceReader:
        key = (frame.store, frame.sequence)
        if key not in self._readers:
            self._readers[key] = SequenceReader(frame.store, frame.sequence, cache_bytes=self.cache_bytes)
        return self._readers[key]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0])
        while True:
            yield self.sample(rng)

    def sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        # Every optional step draws from ``rng`` only when switched on, so an option that is off changes no
        # crop: the same seed gives the same stream as a configuration without that option.
        frame = self.frames[int(rng.integers(len(self.frames)))]
        reader = self._reader(frame)
        y0, x0 = self._crop_origin(rng, frame, reader)
        aug = self.augment
        side = self.crop + 2 * self.margin
        warp = sample_warp(rng, side, rotation_p=aug.rotation_p, rotation_max_degrees=aug.rotation_max_degrees,
                           elastic_p=aug.elastic_p, elastic_alpha=aug.elastic_alpha, elastic_sigma=aug.elastic_sigma)
        border = warp.border if warp is not None else 0
        full = side + 2 * border  # what the warp and the model need, in resampled pixels
        context = resample.source_side(self.margin + border, self.scale) if self.scale != 1 else self.margin + border
        read = resample.source_side(full, self.scale) if self.scale != 1 else full
        window = (y0 - context, x0 - context, read)
        arrays = {"image": self._images(reader, frame, window)}
        arrays.update(self._targets(reader, frame, window))
        if self.ignore_unannotated:
            arrays["valid"] = self._valid(reader, frame, window)
        if read != full:
            arrays = {name: self._resample(name, a, (full, full)) for name, a in arrays.items()}
        if warp is not None:
            arrays = {name: _warp(name, a, warp) for name, a in arrays.items()}
        if "labels" in arrays:  # weights follow the (warped) labels, computed after the warp
            arrays["weight"] = edge_distance_weights(arrays.pop("labels"))[None]
        k = int(rng.integers(6)) if aug.flips_and_rotations else 0
        arrays = {name: _flip_rotate(a, k) for name, a in arrays.items()}
        image = arrays["image"]
        if aug.intensity_jitter:
            gain = 1.0 + rng.uniform(-aug.intensity_jitter, aug.intensity_jitter)
            offset = rng.uniform(-aug.intensity_jitter, aug.intensity_jitter)
            image = image * np.float32(gain) + np.float32(offset)
        if aug.noise_std and (aug.noise_p >= 1.0 or rng.random() < aug.noise_p):
            image = add_noise(image, rng, aug.noise_std, aug.noise_kind)
        arrays["image"] = image
        return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()}

    def _resample(self, name: str, array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """A window read at the original resolution, brought to the resampled size (classes kept crisp)."""
        if name == "image":
            return resample.resize_images(array, shape)
        if name in ("labels", "valid"):
            return resample.resize_labels(array, shape)
        if name == "weight":
            return resample.resize_images(array, shape)
        if self.target_kind == "mask_marker":
            return resample.resize_masks(array, shape)
        classes, thin = (3, TERTIARY_BOUNDARY) if self.target_kind == "tertiary" else (2, None)
        return resample.resize_classes(array, shape, classes, thin)

    def _crop_origin(self, rng: np.random.Generator, frame: FrameRef, reader: SequenceReader) -> tuple[int, int]:
        """Top-left corner of the loss region (original pixels): uniform, or centred on an annotated pixel with
        ``foreground_p``."""
        height, width = reader.frame_shape[-2:]
        side = resample.source_side(self.crop, self.scale) if self.scale != 1 else self.crop
        high_y, high_x = max(height - side, 0), max(width - side, 0)
        if self.foreground_p > 0 and rng.random() < self.foreground_p:
            stride, points = self._foreground_points(frame, reader)
            if points.size:
                row, col = divmod(int(points[int(rng.integers(points.size))]), -(-width // stride))
                y, x = min(row * stride + stride // 2, height - 1), min(col * stride + stride // 2, width - 1)
                return (int(np.clip(y - side // 2, 0, high_y)), int(np.clip(x - side // 2, 0, high_x)))
        return int(rng.integers(0, high_y + 1)), int(rng.integers(0, high_x + 1))

    def _foreground_points(self, frame: FrameRef, reader: SequenceReader) -> tuple[int, np.ndarray]:
        """``(stride, cells)``: flat indices of the grid cells (``stride`` px squares) holding annotated pixels.

        Read once per frame from its instance labels (one whole-frame read of a zstd-compressed label array) and
        kept, so later foreground crops of the frame cost a random draw.
        """
        cached = self._foreground.get(frame)
        if cached is not None:
            return cached
        height, width = reader.frame_shape[-2:]
        stride = max(1, math.ceil(math.sqrt(height * width / FOREGROUND_GRID_POINTS)))
        labels = reader.crop(f"{frame.source}_seg", frame.t, 0, 0, height, width, z=frame.z)
        rows, cols = -(-height // stride), -(-width // stride)
        padded = np.zeros((rows * stride, cols * stride), dtype=bool)
        padded[:height, :width] = labels > 0
        occupied = padded.reshape(rows, stride, cols, stride).any(axis=(1, 3))
        points = np.flatnonzero(occupied).astype(np.int32)
        if not points.size:
            logger.debug("%s/%s t=%d: no annotated pixels, foreground crops fall back to uniform",
                         frame.store, frame.sequence, frame.t)
        self._foreground[frame] = (stride, points)
        return stride, points

    def _valid(self, reader: SequenceReader, frame: FrameRef, window: tuple[int, int, int]) -> np.ndarray:
        """``(1, s, s)`` float mask: 0 where the loss ignores pixels near unannotated cells, else 1."""
        ignored = self._unannotated_region(frame, reader)
        y0, x0, side = window
        if ignored is None:
            return np.ones((1, side, side), np.float32)
        height, width = ignored.shape
        top, left = max(y0, 0), max(x0, 0)
        inner = ignored[top : min(y0 + side, height), left : min(x0 + side, width)]
        pads = ((top - y0, y0 + side - min(y0 + side, height)), (left - x0, x0 + side - min(x0 + side, width)))
        if any(p for pair in pads for p in pair):
            inner = np.pad(inner, pads, mode="symmetric")
        return (~inner).astype(np.float32)[None]

    def _unannotated_region(self, frame: FrameRef, reader: SequenceReader) -> np.ndarray | None:
        """The frame's pixels near cells with a GT TRA marker but no GT SEG label (None: there are none).

        Computed once per frame from whole-frame reads and kept: a marker counts as unannotated when less than half
        of it lies on SEG labels; its region is the marker grown by half the markers' median radius, less the
        annotated cells. ST labels are complete by construction, so only GT frames are checked.
        """
        if frame in self._unannotated:
            return self._unannotated[frame]
        region = None
        if frame.source == "gt" and reader.has("tra"):
            height, width = reader.frame_shape[-2:]
            markers = reader.crop("tra", frame.t, 0, 0, height, width, z=frame.z)
            labels = reader.crop("gt_seg", frame.t, 0, 0, height, width, z=frame.z)
            region = unannotated_region(markers, labels)
        self._unannotated[frame] = region
        return region

    def _images(self, reader: SequenceReader, frame: FrameRef, window: tuple[int, int, int]) -> np.ndarray:
        """``(1, s, s)``, or ``(T, 1, s, s)`` for a time window: frames t-T+1..t, clamped to the sequence start."""
        if self.time_window == 1:
            return normalize(_padded_crop(reader, "raw", frame, *window), reader.stats, self.normalization)[None]
        times = [max(frame.t - lag, 0) for lag in reversed(range(self.time_window))]
        crops = {t: _padded_crop(reader, "raw", frame, *window, t=t) for t in set(times)}
        return normalize(np.stack([crops[t] for t in times]), reader.stats, self.normalization)[:, None]

    def _targets(self, reader: SequenceReader, frame: FrameRef, window: tuple[int, int, int]) -> dict[str, np.ndarray]:
        """Target arrays of the crop, as the target kind stores them: one class map (softmax kinds) or stacked
        channels (sigmoid kinds); ``labels`` becomes the weight map after warping."""
        source, kind = frame.source, TARGET_KINDS[self.target_kind]
        stored = [_padded_crop(reader, f"{source}/{name}", frame, *window) for name in kind.stored_targets]
        if kind.activation == "softmax":
            out = {"target": stored[0].astype(np.int64)}
        else:
            out = {"target": np.stack(stored).astype(np.float32)}
        if self.weights and kind.weight_source == "weight":
            out["weight"] = _padded_crop(reader, f"{source}/weight", frame, *window).astype(np.float32)
        elif self.weights and kind.weight_source == "labels":
            out["labels"] = _padded_crop(reader, f"{source}_seg", frame, *window)
        return out


def unannotated_region(markers: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """Pixels near cells that TRA ``markers`` mark but SEG ``labels`` leave unannotated, or None when every
    marked cell is annotated; see :meth:`RandomCrops._unannotated_region`."""
    ids, inverse = np.unique(markers, return_inverse=True)
    inverse = inverse.reshape(markers.shape)
    if ids.size <= 1 and (ids.size == 0 or ids[0] == 0):
        return None
    sizes = np.bincount(inverse.ravel(), minlength=ids.size)
    on_labels = np.bincount(inverse.ravel(), weights=(labels > 0).ravel(), minlength=ids.size)
    missing = (ids != 0) & (on_labels < 0.5 * sizes)
    if not missing.any():
        return None
    radius = max(2, round(0.5 * math.sqrt(float(np.median(sizes[ids != 0])) / math.pi)))
    grown = ndimage.binary_dilation(missing[inverse], structure=ndimage.generate_binary_structure(2, 1),
                                    iterations=radius)
    return grown & (labels == 0)


def _warp(name: str, array: np.ndarray, warp: Warp) -> np.ndarray:
    """Images interpolate linearly; targets, weight maps and labels take their nearest source pixel, so classes,
    label ids and the weights that belong to them stay aligned."""
    return apply_warp(array, warp, order=1 if name == "image" else 0)


def _padded_crop(reader: SequenceReader, name: str, frame: FrameRef, y0: int, x0: int, side: int,
                 t: int | None = None) -> np.ndarray:
    """``side`` x ``side`` window at (y0, x0) of ``frame`` (or of frame ``t`` of its sequence, same slice); the
    part outside the frame is mirrored from inside it."""
    height, width = reader.frame_shape[-2:]
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + side, height), min(x0 + side, width)
    inner = reader.crop(name, frame.t if t is None else t, top, left, bottom - top, right - left, z=frame.z)
    pads = ((top - y0, y0 + side - bottom), (left - x0, x0 + side - right))
    if any(p for pair in pads for p in pair):
        # "symmetric" repeats the edge pixel, so any pad width works even for small frames (np.pad tiles it).
        inner = np.pad(inner, pads, mode="symmetric")
    return inner


def _flip_rotate(array: np.ndarray, k: int) -> np.ndarray:
    """One of six: identity, h-flip, v-flip, rot 90/180/270 (XB-Net's augmentation), on the last two axes."""
    if k == 1:
        return array[..., :, ::-1]
    if k == 2:
        return array[..., ::-1, :]
    if k >= 3:
        return np.rot90(array, k - 2, axes=(-2, -1))
    return array


class TrainingStreams:
    """One endless batch iterator per dataset (or one pooled iterator for ``mix``), this rank's shard."""

    def __init__(self, data: DataConfig, *, target_kind: str, margin: int, size_multiple: int, rank: int,
                 world_size: int, seed: int, weights: bool, pooled: bool, time_window: int = 1) -> None:
        self.names = data.dataset_names
        self.frames_per_dataset: dict[str, int] = {}
        self._iterators: dict[str | int, Iterator[dict[str, torch.Tensor]]] = {}
        self._loaders: list[DataLoader] = []
        shards: dict[str, list[FrameRef]] = {}
        crops: dict[str, int] = {}
        for name, store in zip(self.names, data.stores, strict=True):
            frames = training_frames(Path(store), data)
            self.frames_per_dataset[name] = len(frames)
            # Each rank trains on its own shard; a rank that would get nothing shares all frames instead.
            shards[name] = frames[rank::world_size] or frames
            readers = {(f.store, f.sequence): SequenceReader(f.store, f.sequence) for f in frames}
            crops[name] = crop_size_for(data.crop_for(name), frames, readers, size_multiple, data.scale_for(name))
        common = dict(margin=margin, target_kind=target_kind, weights=weights, normalization=data.normalization,
                      augment=data.augment, cache_bytes=CACHE_BYTES_PER_SEQUENCE if data.cache_in_ram else 0,
                      foreground_p=data.foreground_crop_p, time_window=time_window,
                      ignore_unannotated=data.ignore_unannotated)
        if pooled:
            if len(set(data.scales.values())) > 1:
                raise UserInputError(f"scheme mix pools every dataset into one stream and needs one data.scale for "
                                     f"all; got {data.scales}")
            frames = [f for name in self.names for f in shards[name]]
            dataset = RandomCrops(frames, crop=crops[self.names[0]], seed=_seed(seed, rank, -1),
                                  scale=data.scale_for(self.names[0]), **common)
            self._add(POOLED, dataset, data.batch_size_for(self.names[0]), data.loader_workers)
        else:
            for index, name in enumerate(self.names):
                dataset = RandomCrops(shards[name], crop=crops[name], seed=_seed(seed, rank, index),
                                      scale=data.scale_for(name), **common)
                self._add(name, dataset, data.batch_size_for(name), data.loader_workers)

    def _add(self, key: str | int, dataset: RandomCrops, batch_size: int, workers: int) -> None:
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
                            pin_memory=torch.cuda.is_available())
        self._loaders.append(loader)
        self._iterators[key] = iter(loader)

    def next(self, key: str | int, device: torch.device) -> dict[str, torch.Tensor]:
        batch = next(self._iterators[key])
        return {name: value.to(device, non_blocking=True) for name, value in batch.items()}


def _seed(seed: int, rank: int, stream: int) -> int:
    return int(np.random.default_rng([seed, rank, stream + 1]).integers(2**31))


def build_training_streams(data: DataConfig, **kwargs: Any) -> TrainingStreams:
    return TrainingStreams(data, **kwargs)


def load_validation_frames(data: DataConfig, time_window: int = 1) -> dict[str, list[ValidationFrame]]:
    """Every validation frame (or 3D slice) of each dataset, read whole and normalized like training.

    With ``time_window`` > 1 each frame also carries its window (frames t-T+1..t of its sequence, the first
    frame repeated before the sequence starts), for models that see several frames.
    """
    out: dict[str, list[ValidationFrame]] = {}
    for name, store in zip(data.dataset_names, data.stores, strict=True):
        frames = dataset_frames(Path(store), data.configuration, "val")
        readers: dict[str, SequenceReader] = {}
        items = []
        for frame in frames:
            reader = readers.setdefault(frame.sequence, SequenceReader(frame.store, frame.sequence))
            raw = reader.frame("raw", frame.t)
            labels = reader.frame(f"{frame.source}_seg", frame.t)
            if frame.z is not None:
                raw, labels = raw[frame.z], labels[frame.z]
            window = None
            if time_window > 1:
                times = [max(frame.t - lag, 0) for lag in reversed(range(time_window))]
                stack = np.stack([_frame_slice(reader, t, frame.z) for t in times])
                window = normalize(stack, reader.stats, data.normalization)
            items.append(ValidationFrame(raw=raw, image=normalize(raw, reader.stats, data.normalization),
                                         labels=labels, window=window))
        if not items:
            logger.warning("%s has no validation frames in configuration %s", name, data.configuration)
        out[name] = items
    return out


def _frame_slice(reader: SequenceReader, t: int, z: int | None) -> np.ndarray:
    """Raw frame ``t`` (2D), or only its slice ``z`` of a 3D frame (one slice read, not the volume)."""
    height, width = reader.frame_shape[-2:]
    return reader.crop("raw", t, 0, 0, height, width, z=z)


def epoch_minibatches(frames: int, batch_size: int, world_size: int) -> int:
    """One pass over a dataset's frames, the same number on every rank (DDP needs equal step counts)."""
    return max(1, math.ceil(frames / (batch_size * world_size)))
