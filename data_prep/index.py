"""The Parquet frame index ``OUT/index.parquet``: build it from the stores, load it, select frames.

The columns, the six data configurations and the split rules are documented with the rest of the format
in :mod:`celltune.data_prep.store_format` ("FRAME INDEX").
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from celltune.data_prep import store_format as sf
from celltune.data_prep.common import UserInputError

INDEX_VERSION = 1
NO_Z = -1
VAL_FRACTION = 0.1
CONFIGS = ("gt", "st", "gt+st", "all-gt", "all-st", "all-gt+st")
SPLITS = ("train", "val")


def split_column(config: str) -> str:
    """Column holding the membership for ``config`` (``"gt+st"`` -> ``"split_gt_st"``)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown data configuration {config!r}; expected one of {', '.join(CONFIGS)}")
    return "split_" + config.replace("all-", "all_").replace("+", "_")


def _base(config: str) -> str:
    return config.removeprefix("all-")


def _source_column(config: str) -> str | None:
    return {"gt": None, "st": "source_st", "gt+st": "source_gt_st"}[_base(config)]


SCHEMA = pa.schema(
    [
        ("dataset", pa.string()), ("sequence", pa.string()), ("store", pa.string()),
        ("t", pa.int32()), ("z", pa.int32()), ("ndim", pa.int8()), ("shape", pa.list_(pa.int32())),
        ("height", pa.int32()), ("width", pa.int32()), ("dtype", pa.string()),
        ("has_gt_seg", pa.bool_()), ("gt_slice", pa.bool_()), ("has_st_seg", pa.bool_()), ("has_tra", pa.bool_()),
        ("cells_gt", pa.int32()), ("cells_st", pa.int32()),
        ("st_fallback", pa.bool_()), ("gt_st_fallback", pa.bool_()),
    ]
    + [(split_column(c), pa.string()) for c in CONFIGS]
    + [("source_st", pa.string()), ("source_gt_st", pa.string())]
)


def _n_val(n: int) -> int:
    return 0 if n < 2 else max(1, math.floor(VAL_FRACTION * n + 0.5))


def split_units(units: Iterable[tuple[str, int]], seed: int, dataset: str, kind: str) -> dict[tuple[str, int], str]:
    """Seeded 90/10 split of a dataset's annotated frames ``(sequence, t)`` -> ``"train"``/``"val"``."""
    ordered = sorted(set(units))
    rng = np.random.default_rng([seed, zlib.crc32(dataset.encode()), zlib.crc32(kind.encode())])
    order = rng.permutation(len(ordered))
    n_val = _n_val(len(ordered))
    return {ordered[i]: ("val" if rank < n_val else "train") for rank, i in enumerate(order)}


def _sequence_rows(dataset: str, store: str, attrs: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of one sequence, before splits."""
    ndim, shape, seq = attrs["ndim"], list(attrs["frame_shape"]), attrs["sequence"]
    depth = shape[0] if ndim == 3 else 1
    ann = attrs.get("annotations", {})

    def per_row(kind: str) -> tuple[dict[tuple[int, int], int], set[tuple[int, int]]]:
        """(t, z) -> cells, and the (t, z) that come from slice files."""
        a = ann.get(kind) or {}
        cells: dict[tuple[int, int], int] = {}
        for i, t in enumerate(a.get("frames", [])):
            if ndim == 2:
                cells[(t, NO_Z)] = a["cells"][i]
            else:
                for z, n in enumerate(a["cells_per_z"][i]):
                    cells[(t, z)] = n
        sliced = set()
        for (t, z), n in zip(a.get("slices", []), a.get("slice_cells", []), strict=True):
            cells[(t, z)] = n
            sliced.add((t, z))
        return cells, sliced

    gt, gt_sliced = per_row("gt_seg")
    st, _ = per_row("st_seg")
    tra_frames = set((ann.get("tra") or {}).get("frames", []))
    rows = []
    for t in range(attrs["num_frames"]):
        for z in (range(depth) if ndim == 3 else (NO_Z,)):
            key = (t, z)
            rows.append({
                "dataset": dataset, "sequence": seq, "store": store, "t": t, "z": z, "ndim": ndim,
                "shape": shape, "height": shape[-2], "width": shape[-1], "dtype": attrs["dtype"],
                "has_gt_seg": key in gt, "gt_slice": key in gt_sliced, "has_st_seg": key in st,
                "has_tra": t in tra_frames, "cells_gt": gt.get(key, 0), "cells_st": st.get(key, 0),
            })
    return rows


def _assign_splits(rows: list[dict[str, Any]], dataset: str, seed: int) -> None:
    """Fill the split, source and fallback columns of one dataset's rows in place."""
    gt_units = {(r["sequence"], r["t"]) for r in rows if r["has_gt_seg"]}
    st_units = {(r["sequence"], r["t"]) for r in rows if r["has_st_seg"]}
    gt_split = split_units(gt_units, seed, dataset, "gt")
    st_split = split_units(st_units, seed, dataset, "st") if st_units else {}
    st_only = st_units - gt_units
    st_fallback = not st_units
    if gt_units and st_only:
        gt_st_mode = "gt+st"
    elif not gt_units and st_units:
        gt_st_mode = "st"
    else:
        gt_st_mode = "gt"
    for r in rows:
        unit = (r["sequence"], r["t"])
        g, s = r["has_gt_seg"], r["has_st_seg"]
        split_gt = gt_split[unit] if g else None
        if st_fallback:
            split_st, source_st = split_gt, ("gt" if g else None)
        else:
            split_st, source_st = (st_split[unit], "st") if s else (None, None)
        if gt_st_mode == "gt+st":
            if g:
                split_gt_st, source_gt_st = "val", "gt"
            elif s and unit in st_only:
                split_gt_st, source_gt_st = "train", "st"
            else:
                split_gt_st, source_gt_st = None, None
        elif gt_st_mode == "st":
            split_gt_st, source_gt_st = (st_split[unit], "st") if s else (None, None)
        else:
            split_gt_st, source_gt_st = split_gt, ("gt" if g else None)
        r.update({
            "st_fallback": st_fallback, "gt_st_fallback": gt_st_mode != "gt+st",
            split_column("gt"): split_gt, split_column("all-gt"): split_gt,
            split_column("st"): split_st, split_column("all-st"): split_st,
            split_column("gt+st"): split_gt_st, split_column("all-gt+st"): split_gt_st,
            "source_st": source_st if split_st else None, "source_gt_st": source_gt_st if split_gt_st else None,
        })


def build_index(out_dir: Path | str, seed: int = 0) -> pa.Table:
    """Index rows of every complete celltune store in ``out_dir``, with the seeded splits."""
    rows: list[dict[str, Any]] = []
    for store in sf.iter_stores(out_dir):
        attrs = sf.store_attrs(store) or {}
        dataset = attrs["dataset"]
        ds_rows: list[dict[str, Any]] = []
        for seq in attrs["sequences"]:
            ds_rows += _sequence_rows(dataset, store.name, sf.sequence_attrs(store, seq))
        _assign_splits(ds_rows, dataset, seed)
        rows += ds_rows
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    meta = {"celltune.index_version": str(INDEX_VERSION), "celltune.seed": str(seed),
            "celltune.val_fraction": str(VAL_FRACTION), "celltune.configs": json.dumps(CONFIGS)}
    return table.replace_schema_metadata(meta)


def write_index(table: pa.Table, out_dir: Path | str) -> Path:
    """Write ``out_dir/index.parquet`` atomically (temp file + rename)."""
    path = sf.index_path(out_dir)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_index(path: Path | str) -> pa.Table:
    """Read the index from an output folder (or the parquet file itself).

    Use ``.to_pandas()`` on the result for a DataFrame.

    Raises:
        UserInputError: no index there, or one written by an incompatible celltune.
    """
    path = Path(path)
    if path.is_dir():
        path = sf.index_path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: no frame index (run `celltune data prep` first)")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    version = meta.get(b"celltune.index_version")
    if version != str(INDEX_VERSION).encode():
        raise UserInputError(f"{path}: index version {version!r}, expected {INDEX_VERSION}; rerun `celltune data prep`")
    return table


def frames_for(index: pa.Table, config: str, split: str, dataset: str | Iterable[str] | None = None) -> pa.Table:
    """Rows of ``index`` in ``split`` of data configuration ``config``, with the label ``source`` to use.

    Args:
        index: from :func:`load_index`.
        config: one of :data:`CONFIGS`.
        split: ``"train"`` or ``"val"``.
        dataset: one dataset name, several, or None for all (the usual choice for ``all-*`` configs).

    Returns:
        The matching rows sorted by dataset, sequence, t, z, plus a string column ``source``: ``"gt"`` or
        ``"st"``, the annotation whose labels/targets (``gt_seg``/``gt/...`` or ``st_seg``/``st/...``)
        belong to the row in this configuration.

    Raises:
        ValueError: unknown config, split or dataset.
    """
    column = split_column(config)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    mask = pc.equal(index[column], split)
    if dataset is not None:
        names = [dataset] if isinstance(dataset, str) else list(dataset)
        known = set(index["dataset"].to_pylist())
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"dataset {unknown[0]!r} not in the index; known: {', '.join(sorted(known))}")
        mask = pc.and_(mask, pc.is_in(index["dataset"], pa.array(names)))
    rows = index.filter(pc.fill_null(mask, False))
    source_col = _source_column(config)
    source = rows[source_col] if source_col else pa.array(["gt"] * rows.num_rows, pa.string())
    rows = rows.append_column("source", source)
    return rows.sort_by([("dataset", "ascending"), ("sequence", "ascending"), ("t", "ascending"),
                         ("z", "ascending")])


def split_counts(index: pa.Table) -> dict[str, dict[str, dict[str, int]]]:
    """``{config: {dataset: {"train": n, "val": n}}}`` in rows (frames for 2D, slices for 3D)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    datasets = index["dataset"].to_pylist()
    for config in CONFIGS:
        per: dict[str, dict[str, int]] = {}
        for ds, value in zip(datasets, index[split_column(config)].to_pylist(), strict=True):
            counts = per.setdefault(ds, {"train": 0, "val": 0})
            if value is not None:
                counts[value] += 1
        out[config] = per
    return out
