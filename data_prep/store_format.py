"""The celltune store format: what `celltune data prep` writes and every later stage reads.

This docstring is the one description of the format. Loaders, prediction and evaluation use the constants
and helpers below (and :class:`celltune.data_prep.reader.SequenceReader`, :mod:`celltune.data_prep.index`)
instead of spelling paths or attribute names themselves.

Output folder
-------------
::

    OUT/
      index.parquet              one row per frame (2D) or z-slice (3D); see celltune.data_prep.index
      <DS>.zarr/                 one zarr v3 store (plain folder, zarr.storage.LocalStore) per CTC dataset
      .<DS>.zarr.tmp-<hex>/      a store being built; renamed to <DS>.zarr when complete (never read these)
      .prep.lock                 held while `celltune data prep` writes OUT (one writer at a time)

A store is usable only when its root attribute ``celltune.complete`` is ``true``: it is written last, after
every array, and the store is built under a temporary name and renamed into place, so an interrupted run
never leaves a store that looks complete. :func:`is_complete_store` checks it.

Store hierarchy
---------------
Frame axes are ``(y, x)`` for 2D datasets and ``(z, y, x)`` for 3D ones; every array below has shape
``(T, *frame_shape)`` and axes ``(t, [z,] y, x)`` (zarr ``dimension_names``), T = number of raw frames::

    <DS>.zarr/                    group   attrs["celltune"]: ROOT ATTRIBUTES
      <seq>/                      group   one per sequence ("01", "02"); an OME-Zarr (NGFF 0.5) image:
                                          attrs["ome"]["multiscales"] -> dataset path "raw" with axes t,[z],y,x
                                          attrs["celltune"]: SEQUENCE ATTRIBUTES
        raw                       array   raw frames, original dtype (uint8, uint16, ...)
        labels/                   group   NGFF labels group: attrs["ome"]["labels"] = names present
          gt_seg/0                array   GT SEG instance labels (uint16, or uint32 when an id >= 65536)
          st_seg/0                array   ST SEG instance labels (silver truth)
          tra/0                   array   GT TRA markers labelled by track id
        targets/
          gt/                     group   training targets from GT SEG (same frames / slices as gt_seg)
            tertiary              array   uint8: 0 background, 1 boundary, 2 cell (XB-Net)
            mask                  array   uint8 0/1 cell mask (U-SE-ResNet channel 0)
            marker                array   uint8 0/1 eroded cell markers (U-SE-ResNet channel 1)
            fg                    array   uint8 0/1 foreground with touching cells split (U-Net)
            weight                array   float32 U-Net pixel weight map
          st/                     group   the same from ST SEG
        man_track                 array   int64 (N, 4): the man_track.txt table, columns L B E P

Label, TRA and target arrays exist only when the sequence has that annotation; they always span all T
frames, but only annotated frames (or slices) are written: the rest read as 0 (zarr does not store empty
chunks). ``annotations`` in the sequence attributes lists what is annotated; never infer it from zeros.
3D GT may be full volumes (``man_segTTT.tif``) or single slices (``man_seg_TTT_ZZZ.tif``); a slice is
written at its z, its targets are computed in 2D on that slice, and it is listed under ``slices``.

Loaders name arrays with the short names in :data:`ARRAY_NAMES` (``"raw"``, ``"gt_seg"``,
``"st/tertiary"``, ...); :func:`array_path` maps a name to its path inside the sequence group.

How loaders read
----------------
::

    index = load_index(OUT)                                   # celltune.data_prep.index
    rows = frames_for(index, "gt+st", "train", "DIC-C2DH-HeLa").to_pylist()
    row = rows[i]
    reader = SequenceReader(OUT / row["store"], row["sequence"])   # celltune.data_prep.reader
    image = reader.crop("raw", row["t"], y0, x0, 256, 256)           # z=row["z"] for 3D data
    target = reader.crop(f"{row['source']}/tertiary", row["t"], y0, x0, 256, 256)
    labels = reader.crop(f"{row['source']}_seg", row["t"], y0, x0, 256, 256)
    low, high = reader.stats["p1"], reader.stats["p99"]           # per-sequence normalization

Create readers in the main process and let each DataLoader worker use its own copy: a reader opens
nothing until its first read and pickles without open handles.

Chunks, shards and codecs
-------------------------
- chunks ``(1, [1,] 256, 256)`` (smaller when the frame is): a 256x256 random crop touches at most four
  chunks; one shard per frame ``(1, [Z,] Yp, Xp)`` with Yp, Xp rounded up to whole chunks, so every
  frame of every array is one file ``<array>/c.<t>.0.0[.0]`` holding its chunks plus an index.
- raw: blosc lz4 with bit-shuffle (2-3x smaller than raw bytes, decodes at ~1 GB/s);
  labels and all targets: zstd level 1 (labels shrink 100-500x, the weight map ~60x).
- fill value 0 everywhere. The shards use the standard zarr v3 ``sharding_indexed`` codec (index at the
  end, crc32c-checked), so any zarr v3 reader opens them; celltune writes and reads them directly
  (:mod:`celltune.data_prep.shards`) because zarr's generic path costs ~1 ms per chunk.

ROOT ATTRIBUTES (``attrs["celltune"]`` of ``<DS>.zarr``)
--------------------------------------------------------
``kind`` = :data:`STORE_KIND`, ``format_version`` = :data:`FORMAT_VERSION`, ``dataset``, ``ndim`` (2|3),
``sequences`` (names), ``params`` (conversion parameters: chunking, codecs, target parameters),
``fingerprint`` (sha256 over params and every source file's path, size and sha256: a store is up to date
when a re-run computes the same value), ``celltune_version``, ``created`` (UTC ISO time), and
``complete`` = true (written last).

SEQUENCE ATTRIBUTES (``attrs["celltune"]`` of ``<DS>.zarr/<seq>``)
------------------------------------------------------------------
- ``sequence``, ``ndim``, ``num_frames`` (T), ``frame_shape`` ([Y, X] or [Z, Y, X]), ``dtype`` (raw),
  ``frame_digits`` (3 or 4, as in ``tNNN.tif``).
- ``stats``: intensities of the raw frames over the whole sequence, for normalization:
  ``min``, ``max``, ``p1``, ``p99`` (numpy's default linear percentiles), ``mean``, ``std``, ``exact``
  (true for 8/16-bit integer data, computed from a full histogram; otherwise from a deterministic
  subsample of at most 2^24 values).
- ``annotations``: for each of ``gt_seg``, ``st_seg``, ``tra`` present::

      {"frames": [t, ...],          frames annotated as a whole (2D frame or 3D volume), ascending
       "cells": [n, ...],           distinct positive labels per listed frame
       "cells_per_z": [[n_z...]],   3D only: distinct labels in each z-slice of each listed volume
       "slices": [[t, z], ...],     3D only: single annotated slices (man_seg_TTT_ZZZ.tif)
       "slice_cells": [n, ...],     distinct labels per listed slice
       "dtype": "uint16"}

- ``targets``: ``{"gt": {...}, "st": {...}}`` each with ``frames``, ``slices`` (as above) and ``params``
  (from :func:`celltune.data_prep.targets.target_parameters`; ``params_2d`` also for slices in 3D).
- ``man_track``: ``{"tracks": N}`` when the table exists.
- ``provenance``: ``files`` = list of ``{"path": relative to the dataset folder, "size", "sha256"}``,
  ``source`` (the dataset folder when converted), ``celltune_version``.

FRAME INDEX (``OUT/index.parquet``, :mod:`celltune.data_prep.index`)
-------------------------------------------------------------------
One row per (dataset, sequence, t) for 2D data and per (dataset, sequence, t, z) for 3D data, covering
every raw frame (annotated or not). Columns:

==================  ==========  ===============================================================
dataset, sequence   string      ``"DIC-C2DH-HeLa"``, ``"01"``
store               string      store folder name inside OUT (``"DIC-C2DH-HeLa.zarr"``)
t, z                int32       frame; z-slice for 3D, ``-1`` (``index.NO_Z``) for 2D
ndim                int8        2 or 3
shape               list<int32> frame shape ``[Y, X]`` or ``[Z, Y, X]``
height, width       int32       Y and X
dtype               string      raw dtype
has_gt_seg          bool        GT SEG covers this row (full frame/volume, or this annotated slice)
gt_slice            bool        that GT comes from a single-slice file (man_seg_TTT_ZZZ.tif)
has_st_seg          bool        ST SEG covers this row
has_tra             bool        a TRA mask exists for this frame
cells_gt, cells_st  int32       distinct labels in this row's GT / ST (0 when not annotated)
st_fallback         bool        the dataset has no ST: configs st / all-st use its GT frames
gt_st_fallback      bool        configs gt+st / all-gt+st fall back (see below)
split_<config>      string      ``"train"``, ``"val"`` or null, per config in :data:`index.CONFIGS`;
                                column names from :func:`index.split_column` (``gt+st`` ->
                                ``split_gt_st``, ``all-gt`` -> ``split_all_gt``)
source_st,          string      which labels (``"gt"``/``"st"``) a member row of st / gt+st trains or
source_gt_st                    validates on (gt always uses ``"gt"``); :func:`index.frames_for` adds it
==================  ==========  ===============================================================

Configurations (Table 2 of the paper) and split rules, decided per dataset:

- ``gt``: frames with GT SEG, split 90/10 into train/val.
- ``st``: frames with ST SEG, split 90/10. A dataset without ST uses its ``gt`` split instead
  (``st_fallback``, source ``gt``).
- ``gt+st``: ST frames train, GT frames validate; a frame with GT is never a training frame (its image
  would otherwise be seen in training through its ST). Falls back (``gt_st_fallback``) to the ``gt``
  split when the dataset has no ST or no ST frame without GT, and to the ``st`` split when it has no GT.
- ``all-gt``, ``all-st``, ``all-gt+st``: the union over all datasets of the same per-dataset memberships,
  so a frame is in the same split whether a model trains on one dataset or on all (use
  :func:`index.frames_for` with ``dataset=None``).

The unit of a split is a frame (all z-slices of a 3D frame share its split). With n annotated frames,
``max(1, round(0.1 n))`` go to val when n >= 2 (so val is never empty and train keeps n - 1 >= 1), none
when n == 1. The choice is a seeded permutation of the sorted frames, seeded by (seed, dataset name, config)
only, so it is reproducible and does not change when other datasets are added to OUT.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STORE_KIND = "celltune-ctc-store"
FORMAT_VERSION = 1
ATTRS_KEY = "celltune"  # the key, in a group's zarr attributes, holding celltune's attributes
OME_KEY = "ome"
NGFF_VERSION = "0.5"

STORE_SUFFIX = ".zarr"
INDEX_FILE = "index.parquet"
LOCK_FILE = ".prep.lock"
TMP_MARKER = ".tmp-"

CHUNK_YX = 256

RAW = "raw"
LABEL_KINDS = ("gt_seg", "st_seg", "tra")
SEG_KINDS = ("gt_seg", "st_seg")
TARGET_SOURCES = {"gt_seg": "gt", "st_seg": "st"}  # label kind -> targets group name
TARGET_ARRAYS = ("tertiary", "mask", "marker", "fg", "weight")
MAN_TRACK = "man_track"
MAN_TRACK_COLUMNS = ("L", "B", "E", "P")

ARRAY_NAMES = (RAW, *LABEL_KINDS) + tuple(
    f"{source}/{name}" for source in TARGET_SOURCES.values() for name in TARGET_ARRAYS
)


def store_path(out_dir: Path | str, dataset: str) -> Path:
    """``OUT/<dataset>.zarr``."""
    return Path(out_dir) / f"{dataset}{STORE_SUFFIX}"


def index_path(out_dir: Path | str) -> Path:
    return Path(out_dir) / INDEX_FILE


def tmp_prefix(dataset: str) -> str:
    """Name prefix of the temporary folders a store is built in (``.<DS>.zarr.tmp-``)."""
    return f".{dataset}{STORE_SUFFIX}{TMP_MARKER}"


def array_path(name: str) -> str:
    """Path of array ``name`` (one of :data:`ARRAY_NAMES`) inside its sequence group."""
    if name == RAW:
        return RAW
    if name in LABEL_KINDS:
        return f"labels/{name}/0"
    source, _, target = name.partition("/")
    if source in TARGET_SOURCES.values() and target in TARGET_ARRAYS:
        return f"targets/{source}/{target}"
    raise ValueError(f"unknown array name {name!r}; expected one of {', '.join(ARRAY_NAMES)}")


def target_name(source: str, target: str) -> str:
    """Short name of a target array, e.g. ``target_name("gt", "tertiary") == "gt/tertiary"``."""
    return f"{source}/{target}"


def frame_axes(ndim: int) -> list[str]:
    """Array axes for a dataset of ``ndim`` spatial dimensions: ``t, [z,] y, x``."""
    return ["t", "y", "x"] if ndim == 2 else ["t", "z", "y", "x"]


def chunk_shape(frame_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk of an array with frames ``frame_shape``: one frame, one z-slice, at most 256 x 256."""
    *lead, y, x = frame_shape
    return (1, *(1 for _ in lead), min(CHUNK_YX, y), min(CHUNK_YX, x))


def shard_shape(frame_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shard of an array with frames ``frame_shape``: the whole frame, rounded up to whole chunks."""
    chunks = chunk_shape(frame_shape)[1:]
    return (1, *(-(-n // c) * c for n, c in zip(frame_shape, chunks, strict=True)))


def read_group_attrs(group_dir: Path | str) -> dict[str, Any]:
    """Attributes of the zarr v3 group at ``group_dir`` (its zarr.json), read without opening zarr.

    Returns ``{}`` when the folder holds no zarr v3 group metadata.
    """
    meta_file = Path(group_dir) / "zarr.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return {}
    attrs = meta.get("attributes") or {}
    return attrs if isinstance(attrs, dict) else {}


def store_attrs(path: Path | str) -> dict[str, Any] | None:
    """ROOT ATTRIBUTES of the celltune store at ``path``, or None when it is not a celltune store."""
    attrs = read_group_attrs(path).get(ATTRS_KEY)
    if isinstance(attrs, dict) and attrs.get("kind") == STORE_KIND:
        return attrs
    return None


def is_celltune_store(path: Path | str) -> bool:
    """True when ``path`` is a celltune store (complete or not)."""
    return store_attrs(path) is not None


def is_complete_store(path: Path | str) -> bool:
    """True when ``path`` is a celltune store whose ``complete`` marker is set."""
    attrs = store_attrs(path)
    return bool(attrs and attrs.get("complete") is True)


def sequence_attrs(store: Path | str, sequence: str) -> dict[str, Any]:
    """SEQUENCE ATTRIBUTES of ``sequence`` in ``store``.

    Raises:
        KeyError: the store has no such sequence.
    """
    attrs = read_group_attrs(Path(store) / sequence).get(ATTRS_KEY)
    if not isinstance(attrs, dict):
        raise KeyError(f"{store}: no sequence {sequence!r}")
    return attrs


def iter_stores(out_dir: Path | str, complete_only: bool = True) -> Iterator[Path]:
    """Celltune stores directly inside ``out_dir`` (sorted by name), complete ones only by default."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for path in sorted(out_dir.glob(f"*{STORE_SUFFIX}")):
        if path.name.startswith("."):
            continue
        if (is_complete_store(path) if complete_only else is_celltune_store(path)):
            yield path


def ngff_image_attrs(name: str, ndim: int, dataset_path: str, window: tuple[float, float] | None = None) -> dict:
    """OME-Zarr 0.5 ``ome`` attributes of an image group whose single resolution is ``dataset_path``."""
    axes = [{"name": "t", "type": "time"}]
    if ndim == 3:
        axes.append({"name": "z", "type": "space"})
    axes += [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name,
            "axes": axes,
            "datasets": [{
                "path": dataset_path,
                "coordinateTransformations": [{"type": "scale", "scale": [1.0] * len(axes)}],
            }],
        }],
    }
    if window is not None:  # viewers use this as the initial contrast (p1..p99 of the sequence)
        ome["omero"] = {
            "channels": [{"label": "raw", "color": "FFFFFF", "active": True,
                          "window": {"start": window[0], "end": window[1], "min": window[0], "max": window[1]}}],
            "rdefs": {"model": "greyscale"},
        }
    return ome


def ngff_label_attrs(name: str, ndim: int) -> dict:
    """OME-Zarr 0.5 ``ome`` attributes of one label image group (``labels/<name>``, array ``0``)."""
    ome = ngff_image_attrs(name, ndim, "0")
    ome["image-label"] = {"source": {"image": "../../"}}
    return ome
