"""Convert one CTC sequence (raw frames, GT/ST SEG, TRA, man_track.txt) into its group of a celltune store.

Runs inside one Ray task per (dataset, sequence) but is a plain function, testable without Ray. Every file
is read once: its bytes are checksummed for provenance, decoded, validated, written as one shard per
frame, and for SEG labels turned into training targets right away, so memory stays at a few frames.
The store layout is described in :mod:`celltune.data_prep.store_format`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from celltune.data_prep import store_format as sf
from celltune.data_prep import targets, tracks
from celltune.data_prep.common import UserInputError
from celltune.data_prep.ctc_layout import LabelFile, SequenceLayout
from celltune.data_prep.shards import LABEL_CODEC, RAW_CODEC, ShardWriter, create_frame_array
from celltune.data_prep.stats import IntensityStats
from celltune.data_prep.tiff_io import FileRecord, check_labels, checksum, read_bytes, read_tiff

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]
_TARGET_DTYPES = {"tertiary": np.uint8, "mask": np.uint8, "marker": np.uint8, "fg": np.uint8, "weight": np.float32}


def celltune_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("celltune")
    except PackageNotFoundError:
        return "0+unknown"


def conversion_params(dataset: str) -> dict[str, Any]:
    """Everything besides the source files that decides a store's content (part of its fingerprint)."""
    return {
        "format_version": sf.FORMAT_VERSION,
        "chunk_yx": sf.CHUNK_YX,
        "codecs": {"raw": "blosc lz4 clevel 5 bitshuffle", "labels": "zstd 1", "targets": "zstd 1"},
        "label_dtype": "uint16 when max < 65536 else uint32",
        "targets": {"2d": targets.target_parameters(dataset, 2), "3d": targets.target_parameters(dataset, 3)},
    }


@dataclass
class SequenceResult:
    """What a conversion task reports back: the sequence attributes written and the files read."""

    dataset: str
    sequence: str
    attrs: dict[str, Any]
    files: list[FileRecord] = field(default_factory=list)
    seconds: float = 0.0  # conversion time inside the worker


class _TooWide(Exception):
    """A label id >= 65536 turned up: redo the kind with uint32."""


def _present_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted positive ids in ``labels`` (bincount of the foreground: ~5x faster than np.unique)."""
    foreground = labels[labels != 0]
    if foreground.size == 0:
        return np.zeros(0, dtype=np.int64)
    if int(foreground.max()) <= 1 << 22:
        return np.flatnonzero(np.bincount(foreground)).astype(np.int64)
    return np.unique(foreground).astype(np.int64)


def _compute_targets(labels: np.ndarray, params: dict[str, Any]) -> dict[str, np.ndarray]:
    tert = targets.tertiary_target(labels, dilation_iterations=params["tertiary"]["dilation_iterations"],
                                   ring_width=params["tertiary"]["ring_width"])
    mask_marker = targets.mask_marker_target(labels, params["mask_marker"]["erosion"])
    fg, weight = targets.unet_weight_map(labels, w0=params["unet_weight"]["w0"],
                                         sigma=params["unet_weight"]["sigma"])
    return {"tertiary": tert, "mask": mask_marker[0], "marker": mask_marker[1], "fg": fg, "weight": weight}


class _SequenceConverter:
    def __init__(self, layout: SequenceLayout, store_dir: Path, progress: Progress | None) -> None:
        self.layout = layout
        self.store_dir = Path(store_dir)
        self.seq_dir = self.store_dir / layout.sequence
        self.progress = progress or (lambda n: None)
        self.records: list[FileRecord] = []
        self.params = conversion_params(layout.dataset)
        self.targets_attrs: dict[str, Any] = {}
        self.present_tra: dict[int, np.ndarray] = {}  # TRA frame -> track ids present, for the table check

    # ------------------------------------------------------------------ helpers

    def _rel(self, path: Path) -> str:
        return self.layout.rel(path)

    def _read(self, path: Path) -> tuple[np.ndarray, FileRecord]:
        return read_tiff(path, self._rel(path), self.layout.rel_to_dataset(path))

    def _group(self, path: str, attributes: dict[str, Any] | None = None) -> None:
        import zarr

        zarr.create_group(zarr.storage.LocalStore(self.store_dir), path=f"{self.layout.sequence}/{path}".rstrip("/"),
                          attributes=attributes or {}, overwrite=True)

    def _array(self, name: str, dtype: np.dtype | type, role: str) -> ShardWriter:
        path = f"{self.layout.sequence}/{sf.array_path(name)}"
        return ShardWriter(create_frame_array(self.store_dir, path, self.frame_shape, self.num_frames, dtype, role))

    # ------------------------------------------------------------------ raw

    def convert_raw(self) -> None:
        layout = self.layout
        self.num_frames = len(layout.raw)
        writer: ShardWriter | None = None
        first_name = layout.raw[0].name
        for t, path in enumerate(layout.raw):
            frame, record = self._read(path)
            if frame.dtype.kind not in "biuf":  # complex (or structured) pixels have no intensity to normalise
                raise UserInputError(f"{self._rel(path)}: raw frame has {frame.dtype} dtype; expected integer or "
                                     "float intensities")
            if writer is None:
                self.frame_shape, self.dtype, self.ndim = frame.shape, frame.dtype, frame.ndim
                self.stats = IntensityStats(frame.dtype)
                writer = self._array(sf.RAW, frame.dtype, RAW_CODEC)
            elif frame.ndim != self.ndim:
                raise UserInputError(f"{self._rel(path)}: {frame.ndim}D frame {frame.shape} in a sequence of "
                                     f"{self.ndim}D frames ({first_name} is {self.frame_shape})")
            elif frame.shape != self.frame_shape:
                raise UserInputError(f"{self._rel(path)}: frame shape {frame.shape} differs from {first_name} "
                                     f"{self.frame_shape}")
            elif frame.dtype != self.dtype:
                raise UserInputError(f"{self._rel(path)}: dtype {frame.dtype} differs from {first_name} ({self.dtype})")
            if frame.dtype.kind == "f" and not np.isfinite(frame).all():  # statistics would be nan/inf for good
                bad = int(np.count_nonzero(~np.isfinite(frame)))
                raise UserInputError(f"{self._rel(path)}: {bad} pixel(s) are NaN or infinite; raw frames must be "
                                     "finite numbers")
            self.stats.add(frame)
            writer.write_frame(t, frame)
            self.records.append(record)
            self.progress(1)

    # ------------------------------------------------------------------ labels

    def _load_label(self, files: list[LabelFile], records: list[FileRecord]) -> tuple[np.ndarray, list[int]]:
        """The label frame of one t: a full file, or a 3D volume holding the annotated slices (zeros elsewhere).

        Returns the labels and the z of the annotated slices (empty for a full annotation).
        """
        if len(files) == 1 and files[0].z is None:
            path = files[0].path
            labels, record = self._read(path)
            records.append(record)
            check_labels(labels, self._rel(path))
            if labels.shape != self.frame_shape:
                raise UserInputError(f"{self._rel(path)}: label shape {labels.shape} differs from raw frame "
                                     f"{self.layout.raw[files[0].t].name} shape {self.frame_shape}")
            return labels, []
        loaded: list[tuple[int, np.ndarray]] = []
        for f in files:
            rel = self._rel(f.path)
            if self.ndim != 3:
                raise UserInputError(f"{rel}: slice annotation man_seg_TTT_ZZZ in a 2D dataset")
            labels, record = self._read(f.path)
            records.append(record)
            check_labels(labels, rel)
            if labels.shape != self.frame_shape[1:]:
                raise UserInputError(f"{rel}: label slice shape {labels.shape} differs from raw frame "
                                     f"{self.layout.raw[f.t].name} slice shape {self.frame_shape[1:]}")
            if not 0 <= f.z < self.frame_shape[0]:
                raise UserInputError(f"{rel}: slice z={f.z} outside raw frame {self.layout.raw[f.t].name} "
                                     f"(depth {self.frame_shape[0]})")
            loaded.append((f.z, labels))
        volume = np.zeros(self.frame_shape, dtype=np.result_type(np.uint16, *(a.dtype for _, a in loaded)))
        for z, labels in loaded:
            volume[z] = labels
        return volume, [z for z, _ in loaded]

    def convert_labels(self, kind: str) -> dict[str, Any] | None:
        files = self.layout.labels(kind)
        if not files:
            return None
        try:
            return self._convert_labels(kind, files, np.dtype(np.uint16))
        except _TooWide:
            logger.info("%s/%s %s: label ids >= 65536, storing uint32", self.layout.dataset, self.layout.sequence, kind)
            shutil.rmtree(self.seq_dir / "labels" / kind, ignore_errors=True)
            if kind in sf.TARGET_SOURCES:
                shutil.rmtree(self.seq_dir / "targets" / sf.TARGET_SOURCES[kind], ignore_errors=True)
            return self._convert_labels(kind, files, np.dtype(np.uint32))

    def _convert_labels(self, kind: str, files: tuple[LabelFile, ...], dtype: np.dtype) -> dict[str, Any]:
        self._group(f"labels/{kind}", {sf.OME_KEY: sf.ngff_label_attrs(f"{self.layout.dataset}/{self.layout.sequence} "
                                                                        f"{kind}", self.ndim)})
        writer = self._array(kind, dtype, LABEL_CODEC)
        source = sf.TARGET_SOURCES.get(kind)
        target_writers: dict[str, ShardWriter] = {}
        if source is not None:
            self._group(f"targets/{source}")
            target_writers = {name: self._array(sf.target_name(source, name), dt, LABEL_CODEC)
                              for name, dt in _TARGET_DTYPES.items()}
        params_nd = self.params["targets"][f"{self.ndim}d"]
        params_2d = self.params["targets"]["2d"]
        by_t: dict[int, list[LabelFile]] = {}
        for f in files:
            by_t.setdefault(f.t, []).append(f)
        records: list[FileRecord] = []
        ann: dict[str, Any] = {"frames": [], "cells": [], "dtype": dtype.name}
        if self.ndim == 3:
            ann.update({"cells_per_z": [], "slices": [], "slice_cells": []})
        for t in sorted(by_t):
            labels, zs = self._load_label(by_t[t], records)
            if dtype.itemsize < 4 and labels.dtype.itemsize > 2 and labels.size and int(labels.max()) >= 1 << 16:
                raise _TooWide
            labels = labels.astype(dtype, copy=False)
            writer.write_frame(t, labels)
            if zs:
                for z in zs:
                    ann["slices"].append([t, z])
                    ann["slice_cells"].append(int(_present_ids(labels[z]).size))
            else:
                ids = _present_ids(labels)
                ann["frames"].append(t)
                ann["cells"].append(int(ids.size))
                if self.ndim == 3:
                    ann["cells_per_z"].append([int(_present_ids(labels[z]).size) for z in range(labels.shape[0])])
                if kind == "tra":
                    self.present_tra[t] = ids
            if target_writers:
                if zs:
                    maps = {name: np.zeros(self.frame_shape, dtype=dt) for name, dt in _TARGET_DTYPES.items()}
                    for z in zs:
                        for name, value in _compute_targets(labels[z], params_2d).items():
                            maps[name][z] = value
                else:
                    maps = _compute_targets(labels, params_nd)
                for name, value in maps.items():
                    target_writers[name].write_frame(t, value)
            self.progress(len(by_t[t]))
        self.records += records
        if source is not None:
            target_attrs: dict[str, Any] = {"frames": ann["frames"], "params": params_nd}
            if self.ndim == 3:
                target_attrs["slices"] = ann["slices"]
                if ann["slices"]:
                    target_attrs["params_2d"] = params_2d
            self.targets_attrs[source] = target_attrs
        return ann

    # ------------------------------------------------------------------ tracks

    def convert_man_track(self) -> dict[str, Any] | None:
        path = self.layout.man_track
        if path is None:
            return None
        rel = self._rel(path)
        data = read_bytes(path, rel)
        self.records.append(FileRecord(self.layout.rel_to_dataset(path), len(data), checksum(data)))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserInputError(f"{rel}: not a text file") from None
        table = tracks.parse_man_track(text, rel, len(self.layout.raw))
        if self.layout.tra:
            names = {f.t: f.path.name for f in self.layout.tra}
            tracks.check_against_masks(table, self.present_tra, rel, names)
        import zarr

        zarr.create_array(zarr.storage.LocalStore(self.store_dir), name=f"{self.layout.sequence}/{sf.MAN_TRACK}",
                          data=table, chunks=(max(len(table), 1), 4), compressors=None,
                          attributes={sf.ATTRS_KEY: {"columns": list(sf.MAN_TRACK_COLUMNS)}})
        self.progress(1)
        return {"tracks": len(table)}

    # ------------------------------------------------------------------ all

    def run(self) -> SequenceResult:
        layout = self.layout
        self._group("")
        self.convert_raw()
        stats = self.stats.result()
        annotations: dict[str, Any] = {}
        kinds = [k for k in sf.LABEL_KINDS if layout.labels(k)]
        if kinds:
            self._group("labels", {sf.OME_KEY: {"version": sf.NGFF_VERSION, "labels": kinds}})
        if any(k in sf.TARGET_SOURCES for k in kinds):
            self._group("targets")
        for kind in kinds:
            annotations[kind] = self.convert_labels(kind)
        man_track = self.convert_man_track()
        attrs: dict[str, Any] = {
            "sequence": layout.sequence,
            "ndim": self.ndim,
            "num_frames": self.num_frames,
            "frame_shape": list(self.frame_shape),
            "dtype": self.dtype.name,
            "frame_digits": layout.digits,
            "stats": stats,
            "annotations": annotations,
            "targets": self.targets_attrs,
            "provenance": {
                "files": [r.to_json() for r in self.records],
                "source": str(layout.dataset_dir),
                "celltune_version": celltune_version(),
            },
        }
        if man_track is not None:
            attrs["man_track"] = man_track
        import zarr

        group = zarr.open_group(zarr.storage.LocalStore(self.store_dir), path=layout.sequence, mode="r+")
        name = f"{layout.dataset}/{layout.sequence}"
        group.update_attributes({
            sf.OME_KEY: sf.ngff_image_attrs(name, self.ndim, sf.RAW, window=(stats["p1"], stats["p99"])),
            sf.ATTRS_KEY: attrs,
        })
        return SequenceResult(layout.dataset, layout.sequence, attrs, list(self.records))


def convert_sequence(layout: SequenceLayout, store_dir: Path | str, progress: Progress | None = None
                     ) -> SequenceResult:
    """Write sequence ``layout`` as group ``<layout.sequence>`` of the store folder ``store_dir``.

    The store's root group must exist. ``progress(n)`` is called after every ``n`` files read.

    Raises:
        UserInputError: unreadable or truncated TIFFs, shape/dtype/dimension mismatches between frames,
            labels that are float or negative or do not fit their raw frame, a man_track.txt that
            contradicts the TRA masks (each message names the file).
    """
    start = time.perf_counter()
    result = _SequenceConverter(layout, Path(store_dir), progress).run()
    result.seconds = time.perf_counter() - start
    return result
