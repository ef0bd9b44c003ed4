"""Random-crop reads from one sequence of a celltune store: what the training loaders use.

A :class:`SequenceReader` holds only the store path and sequence name until its first read, so it can be
created in the main process and pickled into DataLoader workers; each worker then opens its own files.
(zarr-python 3 runs an asyncio loop in a thread, which must never cross a fork or a pickle: the fast path
below does not use zarr at all, and the fallback opens zarr lazily in the process that reads.)

Reads go straight to the per-frame shard files through their index (see store_format and shards): a
256x256 crop reads and decodes at most four chunks with a handful of system calls. Arrays written by
other tools in another layout fall back to zarr indexing. With ``cache_bytes`` the reader keeps whole
decoded frames in RAM (least recently used dropped first), so repeated crops cost a numpy slice.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from celltune.data_prep import store_format as sf
from celltune.data_prep.shards import ShardLayout, ShardReader


class _ZarrArray:
    """Fallback for arrays not laid out as celltune writes them."""

    def __init__(self, store: Path, path: str) -> None:
        import zarr

        self._array = zarr.open_array(zarr.storage.LocalStore(store, read_only=True), path=path, mode="r")
        self.shape = tuple(self._array.shape)
        self.dtype = self._array.dtype

    def read(self, t: int, box: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self._array[(t, *box)])


class SequenceReader:
    """Crops and frames of one sequence, e.g. ``SequenceReader(out / "DIC-C2DH-HeLa.zarr", "01")``.

    Array names are those of :data:`store_format.ARRAY_NAMES`: ``"raw"``, ``"gt_seg"``, ``"st_seg"``,
    ``"tra"``, ``"gt/tertiary"``, ``"st/weight"``, ... Which frames carry labels is in :meth:`annotated`
    (unannotated frames read as 0).

    Args:
        store_path: a ``<DS>.zarr`` store written by ``celltune data prep``.
        sequence: sequence name, e.g. ``"01"``.
        cache_bytes: keep up to this many bytes of decoded frames in RAM (0: no cache).
    """

    def __init__(self, store_path: Path | str, sequence: str, cache_bytes: int = 0) -> None:
        self.store_path = Path(store_path)
        self.sequence = sequence
        self.cache_bytes = int(cache_bytes)
        self._reset()

    def _reset(self) -> None:
        self._attrs: dict[str, Any] | None = None
        self._arrays: dict[str, ShardReader | _ZarrArray] = {}
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"store_path": self.store_path, "sequence": self.sequence, "cache_bytes": self.cache_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"SequenceReader({str(self.store_path)!r}, {self.sequence!r}, cache_bytes={self.cache_bytes})"

    # ------------------------------------------------------------------ metadata

    @property
    def attrs(self) -> dict[str, Any]:
        """The SEQUENCE ATTRIBUTES (see store_format): stats, annotations, targets, provenance."""
        if self._attrs is None:
            if not sf.is_complete_store(self.store_path):
                raise ValueError(f"{self.store_path}: not a complete celltune store")
            try:
                self._attrs = sf.sequence_attrs(self.store_path, self.sequence)
            except KeyError:
                raise ValueError(f"{self.store_path}: no sequence {self.sequence!r}") from None
        return self._attrs

    @property
    def num_frames(self) -> int:
        return int(self.attrs["num_frames"])

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(self.attrs["frame_shape"])

    @property
    def ndim(self) -> int:
        return int(self.attrs["ndim"])

    @property
    def stats(self) -> dict[str, float]:
        return self.attrs["stats"]

    def has(self, name: str) -> bool:
        """True when the sequence has array ``name`` (labels and targets exist only when annotated)."""
        return (self.store_path / self.sequence / sf.array_path(name) / "zarr.json").is_file()

    def annotated(self, name: str) -> dict[str, list]:
        """``{"frames": [t...], "slices": [[t, z]...]}`` carrying data in array ``name`` (all frames for raw)."""
        if name == sf.RAW:
            return {"frames": list(range(self.num_frames)), "slices": []}
        kind = name if name in sf.LABEL_KINDS else {v: k for k, v in sf.TARGET_SOURCES.items()}.get(
            name.partition("/")[0])
        sf.array_path(name)  # validates the name
        ann = self.attrs.get("annotations", {}).get(kind) or {}
        return {"frames": list(ann.get("frames", [])), "slices": [list(s) for s in ann.get("slices", [])]}

    def _array(self, name: str) -> ShardReader | _ZarrArray:
        array = self._arrays.get(name)
        if array is None:
            path = sf.array_path(name)
            array_dir = self.store_path / self.sequence / path
            self.attrs  # noqa: B018 - checks the store is complete before the first read
            if not (array_dir / "zarr.json").is_file():
                raise ValueError(f"{self.store_path.name}/{self.sequence}: no array {name!r} (not annotated?)")
            layout = ShardLayout.open(array_dir)
            array = ShardReader(layout) if layout is not None else _ZarrArray(self.store_path,
                                                                               f"{self.sequence}/{path}")
            self._arrays[name] = array
        return array

    # ------------------------------------------------------------------ reads

    def dtype(self, name: str) -> np.dtype:
        array = self._array(name)
        return array.layout.dtype if isinstance(array, ShardReader) else np.dtype(array.dtype)

    def frame(self, name: str, t: int) -> np.ndarray:
        """The whole frame ``t`` of array ``name``: ``(Y, X)`` or ``(Z, Y, X)`` (cached when enabled)."""
        key = (name, t)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached.copy()
        self._check_t(t)
        data = self._array(name).read(t, tuple(slice(0, n) for n in self.frame_shape))
        if self.cache_bytes:
            self._store(key, data)
            return data.copy()
        return data

    def _store(self, key: tuple[str, int], data: np.ndarray) -> None:
        if data.nbytes > self.cache_bytes:
            return
        self._cache[key] = data
        self._cached_bytes += data.nbytes
        while self._cached_bytes > self.cache_bytes:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes

    def _check_t(self, t: int) -> None:
        if not 0 <= t < self.num_frames:
            raise ValueError(f"frame {t} outside 0..{self.num_frames - 1} of {self.store_path.name}/{self.sequence}")

    def crop(self, name: str, t: int, y0: int, x0: int, h: int, w: int, z: int | None = None) -> np.ndarray:
        """``array[t, (z,) y0:y0+h, x0:x0+w]`` as a new ``(h, w)`` array.

        Args:
            name: array name (``"raw"``, ``"gt_seg"``, ``"gt/tertiary"``, ...).
            t: frame index.
            y0, x0, h, w: the crop window; it must lie inside the frame.
            z: the z-slice, required for 3D data and not allowed for 2D.

        Raises:
            ValueError: unknown array, frame or slice out of range, window outside the frame.
        """
        key = (name, t)
        cached = self._cache.get(key)
        if cached is not None and y0 >= 0 and x0 >= 0:  # hot path with a cache: a dict lookup and a copy
            self._cache.move_to_end(key)
            out = cached[y0:y0 + h, x0:x0 + w] if z is None else cached[z, y0:y0 + h, x0:x0 + w]
            if out.shape == (h, w):
                return out.copy()
        shape = self.frame_shape
        if (z is None) != (len(shape) == 2):
            raise ValueError(f"z={z!r}: pass a z-slice for 3D data and none for 2D (frame shape {shape})")
        if not (0 <= y0 and 0 <= x0 and h > 0 and w > 0 and y0 + h <= shape[-2] and x0 + w <= shape[-1]):
            raise ValueError(f"crop y0={y0} x0={x0} h={h} w={w} outside the {shape[-2]}x{shape[-1]} frame")
        if z is not None and not 0 <= z < shape[0]:
            raise ValueError(f"z={z} outside 0..{shape[0] - 1}")
        self._check_t(t)
        if self.cache_bytes:
            frame = self._array(name).read(t, tuple(slice(0, n) for n in shape))
            self._store(key, frame)
            return (frame[y0:y0 + h, x0:x0 + w] if z is None else frame[z, y0:y0 + h, x0:x0 + w]).copy()
        yx = (slice(y0, y0 + h), slice(x0, x0 + w))
        if z is None:
            return self._array(name).read(t, yx)
        return self._array(name).read(t, (slice(z, z + 1), *yx))[0]
