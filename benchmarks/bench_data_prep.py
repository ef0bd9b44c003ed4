"""Data prep speed against plain TIFF decoding, and random-crop throughput from the stores against TIFFs and RAM.

Part 1 times `prep_datasets` (Ray already started, every store rebuilt with force) against decoding the same
TIFFs serially in one process, both with tifffile (the usual way) and with libtiff (the decoder prep uses).
Goal: prep wall time at most 1.5x the plain decode time.

Part 2 reads random 256x256 crops (the same offsets for every method) per sequence through
`celltune.data_prep.reader.SequenceReader`, the reader the training loaders use:
- store, no cache, against re-reading the whole TIFF frame and cropping (goal: at least 1x);
- store with its in-RAM frame cache (warm), against crops from the sequence held in a numpy array
  (goal: at least 0.5x); both return copies.
Plain zarr indexing (`array[t, y:y+256, x:x+256]`) is shown for reference. The OS page cache is warm for
every method (files were just read), so "no cache" means no cache in the process.

Run: `.venv/bin/python benchmarks/bench_data_prep.py [--data /work/shared/data/ctc] [--crops 2000]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from celltune.data_prep.ctc_layout import discover
from celltune.data_prep.tiff_io import decode_tiff

DEFAULT_DATASETS = ("DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "Fluo-N2DH-SIM+")
CROP = 256


def _tiff_files(src: Path, datasets: list[str]) -> list[Path]:
    return [p for layout in discover(src, datasets) for p in layout.files() if p.suffix == ".tif"]


def bench_prep(src: Path, datasets: list[str], out: Path, repeat: int) -> list[tuple[str, float, str]]:
    import ray

    from celltune.data_prep.prep import prep_datasets
    from celltune.data_prep.ray_session import ensure_ray

    files = _tiff_files(src, datasets)
    total = sum(p.stat().st_size for p in files)
    for p in files:  # warm the page cache so every method reads from memory
        p.read_bytes()
    start = time.perf_counter()
    for p in files:
        tifffile.imread(p)
    t_tifffile = time.perf_counter() - start
    start = time.perf_counter()
    for p in files:
        decode_tiff(p.read_bytes(), p.name)
    t_libtiff = time.perf_counter() - start

    start = time.perf_counter()
    ensure_ray()
    t_ray = time.perf_counter() - start
    cpus = int(ray.cluster_resources().get("CPU", 0))
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        prep_datasets(src, out, datasets=datasets, force=True, show_progress=False)
        runs.append(time.perf_counter() - start)
    t_prep = min(runs)
    start = time.perf_counter()
    prep_datasets(src, out, datasets=datasets, show_progress=False)
    t_skip = time.perf_counter() - start
    note = f"{len(files)} TIFFs, {total / 1e6:.0f} MB"
    return [
        ("decode, tifffile.imread, 1 process", t_tifffile, note),
        ("decode, libtiff (prep's decoder), 1 process", t_libtiff, note),
        (f"prep (force), Ray on {cpus} CPUs, best of {repeat}", t_prep,
         f"{t_prep / t_tifffile:.2f}x tifffile, {t_prep / t_libtiff:.2f}x libtiff (goal <= 1.5x)"),
        ("prep re-run, all up to date", t_skip, "checksums only"),
        ("Ray start (not in prep times)", t_ray, ""),
    ]


def _rate(fn, offsets) -> float:
    start = time.perf_counter()
    for t, y, x in offsets:
        fn(t, y, x)
    return len(offsets) / (time.perf_counter() - start)


def _crop_row(src_seq, store: Path, n: int, rng: np.random.Generator) -> list[str]:
    """Crops per second for one sequence by every method; the same random offsets for all."""
    import zarr

    from celltune.data_prep.reader import SequenceReader

    probe = SequenceReader(store, src_seq.sequence)
    (height, width), frames = probe.frame_shape, probe.num_frames
    offsets = [(int(rng.integers(frames)), int(rng.integers(height - CROP + 1)), int(rng.integers(width - CROP + 1)))
               for _ in range(n)]
    reader = SequenceReader(store, src_seq.sequence)
    store_rate = _rate(lambda t, y, x: reader.crop("raw", t, y, x, CROP, CROP), offsets)
    tiff_rate = _rate(lambda t, y, x: tifffile.imread(src_seq.raw[t])[y:y + CROP, x:x + CROP].copy(),
                      offsets[: max(50, n // 10)])
    array = zarr.open_array(zarr.storage.LocalStore(store, read_only=True), path=f"{src_seq.sequence}/raw", mode="r")
    zarr_rate = _rate(lambda t, y, x: array[t, y:y + CROP, x:x + CROP], offsets[: max(50, n // 4)])
    in_ram = np.stack([tifffile.imread(p) for p in src_seq.raw])
    numpy_rate = _rate(lambda t, y, x: in_ram[t, y:y + CROP, x:x + CROP].copy(), offsets)
    cached = SequenceReader(store, src_seq.sequence, cache_bytes=2 * in_ram.nbytes)
    for t in range(frames):
        cached.frame("raw", t)
    cached_rate = _rate(lambda t, y, x: cached.crop("raw", t, y, x, CROP, CROP), offsets)
    return [f"{src_seq.dataset}/{src_seq.sequence}", f"{width}x{height} {in_ram.dtype}", f"{tiff_rate:,.0f}",
            f"{zarr_rate:,.0f}", f"{store_rate:,.0f}", f"{store_rate / tiff_rate:.1f}x", f"{numpy_rate:,.0f}",
            f"{cached_rate:,.0f}", f"{cached_rate / numpy_rate:.2f}x"]


def bench_crops(src: Path, out: Path, datasets: list[str], n: int) -> list[list[str]]:
    from celltune.data_prep import store_format as sf

    rng = np.random.default_rng(0)
    return [_crop_row(seq, sf.store_path(out, layout.name), n, rng)
            for layout in discover(src, datasets) for seq in layout.sequences]


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CELLTUNE_CTC_DATA", "../shared/data/ctc")),
                        help="folder with CTC datasets (default $CELLTUNE_CTC_DATA)")
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help="comma-separated dataset names")
    parser.add_argument("--crops", type=int, default=2000, help="random crops per sequence and method (default 2000)")
    parser.add_argument("--repeat", type=int, default=1, help="prep runs, best taken (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="store folder (default: a temporary folder)")
    args = parser.parse_args()
    datasets = [d for d in args.datasets.split(",") if d]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_data_prep_"))
    try:
        prep_rows = bench_prep(args.data, datasets, out, args.repeat)
        print(f"\nData prep of {', '.join(datasets)} ({os.cpu_count()} CPUs)\n")
        _print_table(["step", "seconds", "note"], [[a, f"{b:.2f}", c] for a, b, c in prep_rows])
        print(f"\nRandom {CROP}x{CROP} crops per second (raw)\n")
        _print_table(["sequence", "frame", "TIFF read+crop", "zarr index", "store", "store/TIFF (>=1)",
                      "numpy RAM", "store+RAM cache", "cache/numpy (>=0.5)"],
                     bench_crops(args.data, out, datasets, args.crops))
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
