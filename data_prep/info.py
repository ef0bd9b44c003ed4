"""`celltune data info`: a table of what the celltune stores in a folder hold, and the index's split sizes."""

from __future__ import annotations

from pathlib import Path

from celltune.data_prep import store_format as sf
from celltune.data_prep.common import UserInputError


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    right = {i for i, h in enumerate(header) if h not in ("dataset", "seq", "shape", "dtype", "config", "status")}

    def fmt(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths,
                                                                                                    strict=True)))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]).rstrip()


def _num(value: float) -> str:
    return f"{value:.6g}"


def _count(ann: dict | None) -> str:
    if not ann:
        return "-"
    frames, slices = len(ann.get("frames", [])), len(ann.get("slices", []))
    return f"{frames}" + (f"+{slices}sl" if slices else "")


def describe_stores(out_dir: Path | str) -> str:
    """A text table: one line per (dataset, sequence) with frames, shape, dtype, GT/ST/TRA counts and stats.

    GT/ST/TRA columns count annotated frames (``+Nsl``: single annotated slices of 3D frames). Stores that
    are not complete are listed as such. When ``index.parquet`` exists, train/val sizes per data
    configuration follow.

    Raises:
        UserInputError: ``out_dir`` is not a folder or holds no celltune store.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserInputError(f"{out_dir}: not a folder")
    stores = list(sf.iter_stores(out_dir, complete_only=False))
    if not stores:
        raise UserInputError(f"{out_dir}: no celltune stores (run `celltune data prep SRC --out {out_dir}`)")
    header = ["dataset", "seq", "frames", "shape", "dtype", "GT", "ST", "TRA", "tracks", "min", "max", "p1", "p99"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for store in stores:
        attrs = sf.store_attrs(store) or {}
        if attrs.get("complete") is not True:
            notes.append(f"{store.name}: incomplete (an interrupted conversion); rerun `celltune data prep`")
            continue
        for seq in attrs.get("sequences", []):
            a = sf.sequence_attrs(store, seq)
            ann, stats = a.get("annotations", {}), a["stats"]
            rows.append([
                attrs["dataset"], seq, str(a["num_frames"]), "x".join(str(n) for n in a["frame_shape"]), a["dtype"],
                _count(ann.get("gt_seg")), _count(ann.get("st_seg")), _count(ann.get("tra")),
                str(a.get("man_track", {}).get("tracks", "-")),
                _num(stats["min"]), _num(stats["max"]), _num(stats["p1"]), _num(stats["p99"]),
            ])
    parts = [_table(header, rows)] if rows else []
    parts += notes
    index_file = sf.index_path(out_dir)
    if index_file.is_file():
        from celltune.data_prep.index import CONFIGS, load_index, split_counts

        try:
            index = load_index(out_dir)
        except UserInputError as exc:
            parts.append(str(exc))
        else:
            counts = split_counts(index)
            datasets = sorted(set(index["dataset"].to_pylist()))
            meta = index.schema.metadata or {}
            seed = meta.get(b"celltune.seed", b"?").decode()
            split_rows = []
            for config in CONFIGS:
                for ds in datasets if not config.startswith("all-") else ["(all)"]:
                    if ds == "(all)":
                        train = sum(c["train"] for c in counts[config].values())
                        val = sum(c["val"] for c in counts[config].values())
                    else:
                        train, val = counts[config][ds]["train"], counts[config][ds]["val"]
                    split_rows.append([config, ds, str(train), str(val)])
            fallback = sorted({d for d, f in zip(index["dataset"].to_pylist(), index["st_fallback"].to_pylist(),
                                                 strict=True) if f})
            parts.append(f"\n{index_file.name}: {index.num_rows} rows, seed {seed}")
            parts.append(_table(["config", "dataset", "train", "val"], split_rows))
            if fallback:
                parts.append(f"no ST (st and gt+st use GT frames): {', '.join(fallback)}")
    return "\n".join(parts)
