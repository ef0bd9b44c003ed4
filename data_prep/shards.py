"""Create celltune's frame arrays and read/write their per-frame shards directly.

The arrays are ordinary zarr v3 arrays using the ``sharding_indexed`` codec (see store_format). Writing and
reading whole shards through zarr-python costs about 1 ms per chunk in its asyncio pipeline, more than
decoding the TIFFs, so this module encodes a frame's chunks itself and writes the shard file in the
layout of the zarr v3 sharding spec: the encoded chunks, then an index of ``(offset, nbytes)`` uint64 pairs
per chunk in C order (``2**64 - 1`` twice for an absent chunk), then the crc32c of the index. The codec
settings are read back from each array's ``zarr.json``, so what is written always matches the metadata;
tests check that zarr itself reads the result.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numcodecs
import numpy as np

from celltune.data_prep import store_format as sf

MAX_UINT64 = 2**64 - 1
_CRC_BYTES = 4

# Codec presets by array role; values are zarr v3 codec JSON (see store_format, "Chunks, shards and codecs").
RAW_CODEC = "raw"
LABEL_CODEC = "labels"


def _codec_json(role: str, dtype: np.dtype) -> dict[str, Any]:
    if role == RAW_CODEC:
        return {"name": "blosc", "configuration": {
            "typesize": int(dtype.itemsize), "cname": "lz4", "clevel": 5, "shuffle": "bitshuffle", "blocksize": 0}}
    if role == LABEL_CODEC:
        return {"name": "zstd", "configuration": {"level": 1, "checksum": False}}
    raise ValueError(f"unknown codec role {role!r}")


def create_frame_array(
    store_dir: Path,
    path: str,
    frame_shape: tuple[int, ...],
    num_frames: int,
    dtype: np.dtype | str,
    role: str,
    attributes: dict[str, Any] | None = None,
) -> Path:
    """Create an empty ``(num_frames, *frame_shape)`` array at ``path`` in the store folder ``store_dir``.

    Chunks and shards follow :func:`store_format.chunk_shape` / :func:`store_format.shard_shape`; ``role``
    picks the codec (:data:`RAW_CODEC` or :data:`LABEL_CODEC`). Returns the array's folder.
    """
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    dtype = np.dtype(dtype)
    codec = _codec_json(role, dtype)
    config = codec["configuration"]
    compressor = BloscCodec(**config) if codec["name"] == "blosc" else ZstdCodec(**config)
    zarr.create_array(
        zarr.storage.LocalStore(store_dir),
        name=path,
        shape=(num_frames, *frame_shape),
        dtype=dtype,
        chunks=sf.chunk_shape(frame_shape),
        shards=sf.shard_shape(frame_shape),
        compressors=[compressor],
        fill_value=0,
        dimension_names=sf.frame_axes(len(frame_shape)),
        chunk_key_encoding={"name": "default", "separator": "."},  # shard files c.<t>.0.0: no folder per frame
        attributes=attributes or {},
    )
    return Path(store_dir) / path


@dataclass(frozen=True)
class ShardLayout:
    """What the fast path needs to know about one sharded frame array, parsed from its zarr.json."""

    array_dir: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_shape: tuple[int, ...]  # inner chunk, including the leading t axis (1)
    shard_shape: tuple[int, ...]
    compressor: dict[str, Any] | None  # the bytes-to-bytes codec JSON, None when uncompressed
    separator: str

    @property
    def chunks_per_shard(self) -> tuple[int, ...]:
        return tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape, strict=True))

    @property
    def index_nbytes(self) -> int:
        return int(np.prod(self.chunks_per_shard)) * 16 + _CRC_BYTES

    def shard_file(self, t: int) -> Path:
        """File of the shard holding frame ``t`` (shards span one frame and the whole frame extent)."""
        key = self.separator.join(["c", str(t)] + ["0"] * (len(self.shape) - 1))
        return self.array_dir / key

    @classmethod
    def open(cls, array_dir: Path) -> ShardLayout | None:
        """Parse ``array_dir/zarr.json``; None when the array is not laid out as celltune writes it."""
        try:
            meta = json.loads((Path(array_dir) / "zarr.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return cls.from_metadata(Path(array_dir), meta)

    @classmethod
    def from_metadata(cls, array_dir: Path, meta: dict[str, Any]) -> ShardLayout | None:
        try:
            if meta.get("node_type") != "array" or meta.get("zarr_format") != 3 or meta.get("fill_value") != 0:
                return None
            shape = tuple(int(n) for n in meta["shape"])
            grid = meta["chunk_grid"]
            key_enc = meta["chunk_key_encoding"]
            if grid["name"] != "regular" or key_enc["name"] != "default":
                return None
            shard_shape = tuple(int(n) for n in grid["configuration"]["chunk_shape"])
            (sharding,) = meta["codecs"]
            if sharding["name"] != "sharding_indexed":
                return None
            conf = sharding["configuration"]
            if conf.get("index_location", "end") != "end":
                return None
            index_codecs = [c["name"] for c in conf["index_codecs"]]
            if index_codecs != ["bytes", "crc32c"] or conf["index_codecs"][0].get(
                    "configuration", {}).get("endian", "little") != "little":
                return None
            inner = conf["codecs"]
            if inner[0]["name"] != "bytes" or inner[0].get("configuration", {}).get("endian", "little") != "little":
                return None
            if len(inner) == 1:
                compressor = None
            elif len(inner) == 2 and inner[1]["name"] in ("blosc", "zstd"):
                compressor = inner[1]
            else:
                return None
            dtype = np.dtype(meta["data_type"])
            chunk = tuple(int(n) for n in conf["chunk_shape"])
            if chunk[0] != 1 or shard_shape[0] != 1 or any(s % c for s, c in zip(shard_shape, chunk, strict=True)):
                return None
            if any(s < n for s, n in zip(shard_shape[1:], shape[1:], strict=True)):
                return None  # not one shard per frame
        except (KeyError, TypeError, ValueError):
            return None
        separator = key_enc.get("configuration", {}).get("separator", "/")
        return cls(Path(array_dir), shape, dtype.newbyteorder("<"), chunk, shard_shape, compressor, separator)


def _make_codec(compressor: dict[str, Any] | None) -> numcodecs.abc.Codec | None:
    if compressor is None:
        return None
    config = dict(compressor.get("configuration", {}))
    if compressor["name"] == "blosc":
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[config.get("shuffle", "bitshuffle")]
        return numcodecs.Blosc(cname=config.get("cname", "zstd"), clevel=config.get("clevel", 5), shuffle=shuffle,
                               blocksize=config.get("blocksize", 0), typesize=config.get("typesize", 1))
    return numcodecs.Zstd(level=config.get("level", 0), checksum=config.get("checksum", False))


class ShardWriter:
    """Writes whole frames of one array as shard files (one per frame).

    Chunks equal to the fill value (0) are left out of the shard, and a frame that is all 0 writes no file,
    as zarr does; readers see 0 there.
    """

    def __init__(self, array_dir: Path) -> None:
        layout = ShardLayout.open(array_dir)
        if layout is None:
            raise ValueError(f"{array_dir}: not a celltune frame array")
        self.layout = layout
        self._codec = _make_codec(layout.compressor)
        numcodecs.blosc.use_threads = False  # one core per conversion task; blosc threads would oversubscribe

    def write_frame(self, t: int, frame: np.ndarray) -> int:
        """Write frame ``t`` (shape ``array.shape[1:]``); returns the bytes written."""
        layout = self.layout
        frame_shape = layout.shape[1:]
        if frame.shape != frame_shape:
            raise ValueError(f"frame shape {frame.shape} != array frame shape {frame_shape}")
        if not 0 <= t < layout.shape[0]:
            raise ValueError(f"frame {t} outside 0..{layout.shape[0] - 1}")
        data = np.asarray(frame, dtype=layout.dtype)
        chunk = layout.chunk_shape[1:]
        grid = layout.chunks_per_shard[1:]
        index = np.full((int(np.prod(grid)), 2), MAX_UINT64, dtype="<u8")
        parts: list[bytes] = []
        offset = 0
        for flat, coords in enumerate(itertools.product(*(range(g) for g in grid))):
            box = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(coords, chunk, frame_shape, strict=True))
            view = data[box]
            if not view.any():  # equal to the fill value: not stored
                continue
            if view.shape != chunk:  # edge chunk: zarr stores full chunks padded with the fill value
                block = np.zeros(chunk, dtype=layout.dtype)
                block[tuple(slice(0, n) for n in view.shape)] = view
            else:
                block = np.ascontiguousarray(view)
            raw = block.reshape(-1).view(np.uint8)
            encoded = bytes(self._codec.encode(raw)) if self._codec is not None else raw.tobytes()
            index[flat] = (offset, len(encoded))
            offset += len(encoded)
            parts.append(encoded)
        path = layout.shard_file(t)
        if not parts:
            path.unlink(missing_ok=True)
            return 0
        index_bytes = index.tobytes()
        parts.append(index_bytes)
        parts.append(np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes())
        if layout.separator == "/":
            path.parent.mkdir(parents=True, exist_ok=True)
        payload = b"".join(parts)
        with open(path, "wb") as handle:
            handle.write(payload)
        return len(payload)


class ShardReader:
    """Reads boxes of frames of one array straight from its shard files (no zarr, no asyncio).

    Shard indexes are cached per frame after the first read; file handles are not kept, so a reader is
    cheap to create in each DataLoader worker and safe across ``fork``.
    """

    def __init__(self, layout: ShardLayout) -> None:
        self.layout = layout
        self._codec = _make_codec(layout.compressor)
        self._chunk = layout.chunk_shape[1:]
        self._chunk_items = int(np.prod(self._chunk))
        grid = layout.chunks_per_shard[1:]
        self._grid_strides = tuple(int(np.prod(grid[k + 1:])) for k in range(len(grid)))
        self._indexes: dict[int, np.ndarray | None] = {}

    def _read_index(self, fd: int) -> np.ndarray:
        size = os.fstat(fd).st_size
        nbytes = self.layout.index_nbytes
        blob = os.pread(fd, nbytes, size - nbytes)
        if len(blob) != nbytes:
            raise ValueError(f"{self.layout.array_dir}: shard shorter than its index")
        body = blob[:-_CRC_BYTES]
        if np.frombuffer(blob[-_CRC_BYTES:], "<u4")[0] != google_crc32c.value(body):
            raise ValueError(f"{self.layout.array_dir}: shard index checksum mismatch")
        return np.frombuffer(body, dtype="<u8").reshape(-1, 2)

    def _decode(self, blob: bytes) -> np.ndarray:
        data = self._codec.decode(blob) if self._codec is not None else blob
        return np.frombuffer(data, dtype=self.layout.dtype, count=self._chunk_items).reshape(self._chunk)

    def read(self, t: int, box: tuple[slice, ...]) -> np.ndarray:
        """Return ``array[t][box]``; ``box`` holds one slice with explicit start and stop per frame axis."""
        layout = self.layout
        out = np.zeros(tuple(s.stop - s.start for s in box), dtype=layout.dtype)
        index = self._indexes.get(t, False)
        if index is None:  # frame known to be empty (stores are never modified after they are built)
            return out
        try:
            fd = os.open(layout.shard_file(t), os.O_RDONLY)
        except FileNotFoundError:
            self._indexes[t] = None
            return out
        try:
            if index is False:
                index = self._read_index(fd)
                self._indexes[t] = index
            ranges = [range(s.start // c, (s.stop - 1) // c + 1) for s, c in zip(box, self._chunk, strict=True)]
            for coords in itertools.product(*ranges):
                flat = sum(c * s for c, s in zip(coords, self._grid_strides, strict=True))
                offset, nbytes = index[flat]
                if offset == MAX_UINT64:
                    continue
                chunk = self._decode(os.pread(fd, int(nbytes), int(offset)))
                src, dst = [], []
                for k, (s, c) in enumerate(zip(box, self._chunk, strict=True)):
                    lo = max(s.start, coords[k] * c)
                    hi = min(s.stop, (coords[k] + 1) * c)
                    src.append(slice(lo - coords[k] * c, hi - coords[k] * c))
                    dst.append(slice(lo - s.start, hi - s.start))
                out[tuple(dst)] = chunk[tuple(src)]
        finally:
            os.close(fd)
        return out

    def forget(self) -> None:
        """Drop cached shard indexes (after the store was rewritten)."""
        self._indexes.clear()
