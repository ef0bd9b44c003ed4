"""Prediction throughput (frames/s, 512x512, CPU) per architecture, untiled and tiled, with the share of time
spent in post-processing and tracking.

For every architecture at its default options (or ``--width``), a few frames of a synthetic 512x512 sequence
go through the same code ``celltune predict`` runs per frame: ``predict_probabilities`` (full frame, then
forced into ``--tile`` px tiles), ``postprocess`` for the model's target kind and, per sequence,
``track_sequence``. Weights are random, so post-processing and tracking run on what a well-trained model would
output instead: the one-hot target of the ground truth (tertiary or mask + marker), whose object count and
shapes are those of real cells; random-weight outputs would time speckle instead. Ratios compare tiled with
the untiled run of the same model, and every row with the untiled ``unet``, all measured in this run.

Run: ``.venv/bin/python benchmarks/bench_predict.py [--frames 2] [--tile 256] [--models unet xbnet]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from tqdm import tqdm

from celltune.data_prep.stats import IntensityStats
from celltune.data_prep.synth import SynthSpec, generate_dataset
from celltune.data_prep.targets import marker_erosion_for, mask_marker_target, tertiary_target
from celltune.platform.cell_tracker import track_sequence
from celltune.trainables.architectures import build_model
from celltune.trainables.data import normalize
from celltune.trainables.inference import activation_for, predict_probabilities
from celltune.trainables.postprocess import one_hot
from celltune.trainables.target_kinds import postprocess

ARCHITECTURES = ("unet", "unet_xb", "xbnet", "u_se_resnet")
BASELINE = "unet"
SIZE = 512


@dataclass
class Row:
    name: str
    tiled: bool
    inference: float  # seconds per frame
    postprocess: float
    tracking: float

    @property
    def total(self) -> float:
        return self.inference + self.postprocess + self.tracking

    @property
    def frames_per_s(self) -> float:
        return 1.0 / self.total

    @property
    def inference_per_s(self) -> float:
        return 1.0 / self.inference


def synthetic_frames(frames: int, folder: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Raw frames normalized like prediction does (min-max over the sequence) and their GT labels."""
    data = generate_dataset(folder, SynthSpec(name="Bench-Predict", sequences=1, frames=frames, size=SIZE, cells=40,
                                              gt_every=1, seed=11), show_progress=False)
    raw = [tifffile.imread(p) for p in sorted((data / "01").glob("t*.tif"))]
    labels = [tifffile.imread(p) for p in sorted((data / "01_GT" / "SEG").glob("man_seg*.tif"))]
    stats = IntensityStats(raw[0].dtype)
    for frame in raw:
        stats.add(frame)
    return [normalize(frame, stats.result(), "minmax") for frame in raw], labels


def perfect_probabilities(kind: str, labels: np.ndarray) -> np.ndarray:
    """What a perfect model outputs for ``labels``: the one-hot (or 0/1 two-channel) target of ``kind``."""
    if kind == "tertiary":
        return one_hot(tertiary_target(labels, 2, 2), 3)
    if kind == "mask_marker":
        return mask_marker_target(labels, marker_erosion_for("Bench-Predict")).astype(np.float32)
    return one_hot((labels > 0).astype(np.int64), 2)


def measure(name: str, images: list[np.ndarray], labels: list[np.ndarray], *, tile: int | None, batch: int,
            width: int | None) -> Row:
    """Seconds per frame of inference, post-processing and tracking for model ``name``."""
    torch.manual_seed(0)
    model = build_model(name, **({"width": width} if width else {})).eval()
    kind, multiple = model.spec.target_kind, model.spec.size_multiple
    stack = np.stack(images)

    def infer(frames: np.ndarray) -> np.ndarray:
        return predict_probabilities(model, frames, size_multiple=multiple, activation=activation_for(kind),
                                     batch_size=batch, max_tile=tile, tile_overlap=64)

    infer(stack[:1, :128, :128])  # warm-up (kernels, allocator) on a small crop
    start = time.perf_counter()
    infer(stack)
    inference = time.perf_counter() - start

    perfect = [perfect_probabilities(kind, lab) for lab in labels]
    start = time.perf_counter()
    predicted = [postprocess(kind, p) for p in perfect]
    post = time.perf_counter() - start
    start = time.perf_counter()
    track_sequence(predicted)
    tracking = time.perf_counter() - start
    n = len(images)
    return Row(name, tile is not None, inference / n, post / n, tracking / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2, help="frames per measurement (default 2)")
    parser.add_argument("--tile", type=int, default=256, help="tile side forced for the tiled runs (default 256)")
    parser.add_argument("--batch", type=int, default=4, help="frames or tiles per forward pass (default 4)")
    parser.add_argument("--width", type=int, default=None, help="width option for every model (default: each "
                                                                 "model's own)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--models", nargs="*", default=None, help=f"architectures (default {' '.join(ARCHITECTURES)};"
                                                                   f" {BASELINE} always)")
    args = parser.parse_args()
    if args.frames < 1 or args.tile < 128 or args.batch < 1:
        parser.error("need --frames >= 1, --tile >= 128, --batch >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [BASELINE] + [n for n in (args.models or ARCHITECTURES) if n != BASELINE]
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as scratch:
        images, labels = synthetic_frames(args.frames, Path(scratch))
    cells = np.mean([len(np.unique(lab)) - 1 for lab in labels])
    rows: list[Row] = []
    for name in tqdm(names, desc="models", leave=False):
        for tile in (None, args.tile):
            rows.append(measure(name, images, labels, tile=tile, batch=args.batch, width=args.width))

    base = rows[0]
    untiled = {r.name: r for r in rows if not r.tiled}
    print(f"prediction, CPU ({torch.get_num_threads()} threads), {args.frames} frames of {SIZE}x{SIZE} "
          f"(~{cells:.0f} cells/frame), batch {args.batch}, tiled = {args.tile} px tiles with 64 px overlap; "
          f"widths: {f'{args.width} for all' if args.width else 'defaults'}; post-processing and tracking on "
          f"perfect outputs")
    header = (f"| {'model':<12} | {'tiling':<7} | {'infer fr/s':>10} | {'x untiled':>9} | {'x unet':>6} "
              f"| {'total fr/s':>10} | {'post ms/fr':>10} | {'post %':>6} | {'track ms/fr':>11} | {'track %':>7} |")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        same = untiled[row.name]
        print(f"| {row.name:<12} | {('tiled' if row.tiled else 'full'):<7} | {row.inference_per_s:>10.2f} "
              f"| {row.inference_per_s / same.inference_per_s:>9.2f} | {row.frames_per_s / base.frames_per_s:>6.2f} "
              f"| {row.frames_per_s:>10.2f} | {1000 * row.postprocess:>10.1f} "
              f"| {100 * row.postprocess / row.total:>6.1f} "
              f"| {1000 * row.tracking:>11.1f} | {100 * row.tracking / row.total:>7.1f} |")


if __name__ == "__main__":
    main()
