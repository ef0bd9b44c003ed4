"""The Parquet frame index and the six data configurations, on stores holding only attributes (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import zarr

from celltune.data_prep import store_format as sf
from celltune.data_prep.common import UserInputError
from celltune.data_prep.index import (
    CONFIGS,
    build_index,
    frames_for,
    load_index,
    split_column,
    split_counts,
    split_units,
    write_index,
)
from celltune.data_prep.info import describe_stores


def fake_store(out: Path, dataset: str, sequences: dict[str, dict], complete: bool = True) -> Path:
    """A store with the attributes prep writes, without arrays. ``sequences``: name -> annotation frames."""
    path = sf.store_path(out, dataset)
    store = zarr.storage.LocalStore(path)
    zarr.create_group(store, attributes={"celltune": {
        "kind": sf.STORE_KIND, "format_version": sf.FORMAT_VERSION, "dataset": dataset, "ndim": 2,
        "sequences": sorted(sequences), "complete": complete}})
    for seq, spec in sequences.items():
        ann = {kind: {"frames": frames, "cells": [3] * len(frames), "dtype": "uint16"}
               for kind, frames in spec.get("ann", {}).items()}
        zarr.create_group(store, path=seq, attributes={"celltune": {
            "sequence": seq, "ndim": 2, "num_frames": spec["frames"], "frame_shape": [64, 80], "dtype": "uint8",
            "frame_digits": 3, "annotations": ann,
            "stats": {"min": 0.0, "max": 255.0, "p1": 3.0, "p99": 250.0, "mean": 100.0, "std": 9.0, "exact": True},
            "man_track": {"tracks": 4}}})
    return path


def test_split_sizes_and_reproducibility() -> None:
    def val(n: int, seed: int = 0) -> list:
        split = split_units([("01", t) for t in range(n)], seed, "DS", "gt")
        assert len(split) == n
        return sorted(u for u, s in split.items() if s == "val")

    assert [len(val(n)) for n in (1, 2, 3, 9, 10, 14, 15, 16, 25, 100)] == [0, 1, 1, 1, 1, 1, 2, 2, 3, 10]
    assert val(40, seed=1) == val(40, seed=1)
    assert val(40, seed=1) != val(40, seed=2)
    other = split_units([("01", t) for t in range(40)], 1, "Other", "gt")
    assert sorted(u for u, s in other.items() if s == "val") != val(40, seed=1)  # seeded per dataset


def test_configs_with_gt_and_st(tmp_path: Path) -> None:
    fake_store(tmp_path, "A", {
        "01": {"frames": 20, "ann": {"gt_seg": [2, 5, 9], "st_seg": list(range(20)), "tra": list(range(20))}},
        "02": {"frames": 20, "ann": {"gt_seg": [1, 4], "st_seg": list(range(20))}},
    })
    index = build_index(tmp_path, seed=7)
    rows = index.to_pylist()
    assert len(rows) == 40 and all(r["z"] == -1 and r["shape"] == [64, 80] for r in rows)
    assert [r["has_gt_seg"] for r in rows if r["sequence"] == "01"][:6] == [False, False, True, False, False, True]
    assert sum(r["has_tra"] for r in rows) == 20 and sum(r["cells_gt"] for r in rows) == 15
    # gt: the 5 GT frames, 90/10 -> 4 train, 1 val
    gt = [r["split_gt"] for r in rows if r["has_gt_seg"]]
    assert sorted(gt) == ["train"] * 4 + ["val"]
    assert all(r["split_gt"] is None for r in rows if not r["has_gt_seg"])
    # st: 40 ST frames -> 36 / 4
    assert [r["split_st"] for r in rows].count("val") == 4 and not any(r["st_fallback"] for r in rows)
    # gt+st: GT frames validate, ST frames without GT train
    assert all(r["split_gt_st"] == ("val" if r["has_gt_seg"] else "train") for r in rows)
    assert not any(r["gt_st_fallback"] for r in rows)
    for config in CONFIGS:  # all-* hold the same per-dataset memberships
        if config.startswith("all-"):
            assert index[split_column(config)].to_pylist() == index[split_column(config[4:])].to_pylist()
    val = frames_for(index, "gt+st", "val", "A")
    assert val.num_rows == 5 and set(val["source"].to_pylist()) == {"gt"}
    train = frames_for(index, "gt+st", "train", "A")
    assert train.num_rows == 35 and set(train["source"].to_pylist()) == {"st"}
    assert train["t"].to_pylist()[:3] == [0, 1, 3]  # sorted by dataset, sequence, t
    assert frames_for(index, "st", "train").column("source").to_pylist() == ["st"] * 36
    assert build_index(tmp_path, seed=7).equals(index)  # reproducible


def test_fallbacks_without_st_or_without_gt(tmp_path: Path) -> None:
    fake_store(tmp_path, "NoST", {"01": {"frames": 10, "ann": {"gt_seg": [0, 3, 6, 9]}}})
    fake_store(tmp_path, "NoGT", {"01": {"frames": 5, "ann": {"st_seg": [0, 1, 2, 3, 4]}}})
    fake_store(tmp_path, "SameFrames", {"01": {"frames": 4, "ann": {"gt_seg": [0, 2], "st_seg": [0, 2]}}})
    fake_store(tmp_path, "OneFrame", {"01": {"frames": 3, "ann": {"gt_seg": [1]}}})
    index = build_index(tmp_path, seed=0)
    by_ds = {}
    for r in index.to_pylist():
        by_ds.setdefault(r["dataset"], []).append(r)
    no_st = by_ds["NoST"]
    assert all(r["st_fallback"] and r["gt_st_fallback"] for r in no_st)
    assert [r["split_st"] for r in no_st] == [r["split_gt"] for r in no_st] == [r["split_gt_st"] for r in no_st]
    assert sorted(r["split_gt"] for r in no_st if r["split_gt"]) == ["train"] * 3 + ["val"]
    st = frames_for(index, "st", "train", "NoST")
    assert st.num_rows == 3 and set(st["source"].to_pylist()) == {"gt"}
    no_gt = by_ds["NoGT"]
    assert all(r["gt_st_fallback"] and not r["st_fallback"] for r in no_gt)
    assert [r["split_gt_st"] for r in no_gt] == [r["split_st"] for r in no_gt]
    assert set(frames_for(index, "gt+st", "train", "NoGT")["source"].to_pylist()) == {"st"}
    assert all(r["split_gt"] is None for r in no_gt)
    same = by_ds["SameFrames"]  # no ST frame without GT: gt+st uses the gt split
    assert all(r["gt_st_fallback"] for r in same) and [r["split_gt_st"] for r in same] == [r["split_gt"] for r in same]
    assert sorted(filter(None, (r["split_gt"] for r in same))) == ["train", "val"]  # n = 2: val never empty
    assert [r["split_gt"] for r in by_ds["OneFrame"]] == [None, "train", None]  # n = 1: train only
    counts = split_counts(index)
    assert counts["gt"]["NoST"] == {"train": 3, "val": 1} and counts["gt"]["NoGT"] == {"train": 0, "val": 0}
    both = frames_for(index, "all-gt", "train", ["NoST", "OneFrame"])
    assert set(both["dataset"].to_pylist()) == {"NoST", "OneFrame"} and both.num_rows == 4


def test_adding_a_dataset_keeps_splits(tmp_path: Path) -> None:
    fake_store(tmp_path, "A", {"01": {"frames": 30, "ann": {"gt_seg": list(range(0, 30, 2))}}})
    before = build_index(tmp_path, seed=3)
    fake_store(tmp_path, "B", {"01": {"frames": 8, "ann": {"gt_seg": [1, 2, 3]}}})
    after = build_index(tmp_path, seed=3)
    a_rows = [r for r in after.to_pylist() if r["dataset"] == "A"]
    assert a_rows == before.to_pylist()


def test_incomplete_and_foreign_stores_are_not_indexed(tmp_path: Path) -> None:
    fake_store(tmp_path, "Done", {"01": {"frames": 2, "ann": {"gt_seg": [0]}}})
    fake_store(tmp_path, "Half", {"01": {"frames": 2}}, complete=False)
    zarr.create_group(zarr.storage.LocalStore(tmp_path / "Other.zarr"))
    assert set(build_index(tmp_path)["dataset"].to_pylist()) == {"Done"}


def test_write_load_and_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="no frame index"):
        load_index(tmp_path)
    fake_store(tmp_path, "A", {"01": {"frames": 4, "ann": {"gt_seg": [0, 1, 2]}}})
    index = build_index(tmp_path, seed=11)
    path = write_index(index, tmp_path)
    assert path == tmp_path / "index.parquet" and not list(tmp_path.glob(".index*"))
    loaded = load_index(path)
    assert loaded.equals(index) and loaded.schema.metadata[b"celltune.seed"] == b"11"
    assert load_index(tmp_path).to_pandas()["t"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="unknown data configuration 'gt-st'"):
        frames_for(loaded, "gt-st", "train")
    with pytest.raises(ValueError, match="unknown split 'test'"):
        frames_for(loaded, "gt", "test")
    with pytest.raises(ValueError, match="dataset 'B' not in the index"):
        frames_for(loaded, "gt", "train", "B")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1]}), tmp_path / "index.parquet")
    with pytest.raises(UserInputError, match="index version"):
        load_index(tmp_path)


def test_describe_stores(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not a folder"):
        describe_stores(tmp_path / "missing")
    with pytest.raises(UserInputError, match="no celltune stores"):
        describe_stores(tmp_path)
    fake_store(tmp_path, "DS-One", {"01": {"frames": 12, "ann": {"gt_seg": [0, 5], "tra": list(range(12))}},
                                    "02": {"frames": 7, "ann": {"st_seg": [1]}}})
    fake_store(tmp_path, "Broken", {"01": {"frames": 2}}, complete=False)
    write_index(build_index(tmp_path, seed=5), tmp_path)
    text = describe_stores(tmp_path)
    lines = text.splitlines()
    assert lines[0].split() == ["dataset", "seq", "frames", "shape", "dtype", "GT", "ST", "TRA", "tracks",
                                "min", "max", "p1", "p99"]
    assert lines[2].split() == ["DS-One", "01", "12", "64x80", "uint8", "2", "-", "12", "4", "0", "255", "3", "250"]
    assert lines[3].split() == ["DS-One", "02", "7", "64x80", "uint8", "-", "1", "-", "4", "0", "255", "3", "250"]
    assert "Broken.zarr: incomplete" in text
    assert "index.parquet: 19 rows, seed 5" in text
    assert any(line.split() == ["gt", "DS-One", "1", "1"] for line in lines)
    assert any(line.split() == ["all-st", "(all)", "1", "0"] for line in lines)
