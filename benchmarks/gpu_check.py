"""The GPU path measured in one run (issue 14): model step rates, the data path, a short universal run, predict.

Sections, run in this order (the most wanted figures first, each on its own: one that fails is reported and the
next runs), each printed as a table and written to ``--out`` as soon as it is done:

* **models**: forward + backward samples/s of full-width ``xbnet`` and ``unet`` at 512x512 for batch sizes
  8/16/32 in fp32, bf16 autocast, bf16 + channels-last (``--compile`` adds a last section with
  ``torch.compile`` at the largest batch, both layouts), ratio against
  fp32 at the same batch, peak memory, and model FLOP utilisation against ``--peak-tflops`` (the chip's dense
  bf16 rate; H200: 989). FLOPs per sample are 3 x 2 x the convolution MACs (forward, and backward at twice it).
* **train**: a universal ``acc`` run of full-width XB-Net on every store in ``--stores`` for ``--minutes``, in this
  process (``celltune train --local``'s loop), with its validation SEG per dataset, steps/s and data-wait share.
* **data**: random 512x512 augmented crops per second from the stores in one loader process (one worker's
  rate), and the workers the fastest measured step rate needs.
* **predict**: frames/s of the network on 1024x1024 frames, and the share of post-processing and tracking.

``--cpu --tiny`` runs every section at toy sizes on the CPU, so CI keeps this path from rotting between
accelerator runs. On the accelerator machine (no network) ``benchmarks/gpu_check.sh`` installs the carried
wheels and runs it.

    python benchmarks/gpu_check.py --stores STORES [--minutes 4] [--compile] [--out table.md]
    python benchmarks/gpu_check.py --stores STORES --cpu --tiny
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MODELS = ("xbnet", "unet")


@dataclass(frozen=True)
class Sizes:
    side: int
    batches: tuple[int, ...]
    iters: int
    predict_side: int
    predict_frames: int
    width: dict[str, int]  # model options for tiny runs ({} = full width)


FULL = Sizes(side=512, batches=(8, 16, 32), iters=10, predict_side=1024, predict_frames=16, width={})
TINY = Sizes(side=64, batches=(2,), iters=1, predict_side=96, predict_frames=2, width={"width": 8})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device, iters: int) -> float:
    step()  # warm-up (and compilation)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


def model_rows(device: torch.device, sizes: Sizes, *, compile_: bool, peak_tflops: float,
               models: tuple[str, ...] = MODELS) -> list[dict]:
    from celltune.trainables.architectures import build_model
    from celltune.trainables.complexity import count_conv_macs

    modes = [("fp32", None, False, False), ("bf16", torch.bfloat16, False, False),
             ("bf16+channels_last", torch.bfloat16, True, False)]
    batches = sizes.batches
    if compile_:  # its own section, run last: compiling costs about a minute per shape, the largest batch only
        modes = [("bf16+compile", torch.bfloat16, False, True),
                 ("bf16+channels_last+compile", torch.bfloat16, True, True)]
        batches = sizes.batches[-1:]
    rows = []
    for name in models:
        macs = count_conv_macs(build_model(name, **sizes.width), (1, 1, sizes.side, sizes.side))
        for batch in batches:
            baseline = None
            for label, dtype, channels_last, compiled in modes:
                torch.manual_seed(0)
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                model = build_model(name, **sizes.width).to(device, memory_format=fmt).train()
                runner = torch.compile(model) if compiled else model
                images = torch.rand(batch, 1, sizes.side, sizes.side, device=device).to(memory_format=fmt)

                def step(runner=runner, model=model, images=images, dtype=dtype) -> None:
                    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                        loss = runner(images).float().mean()
                    loss.backward()
                    model.zero_grad(set_to_none=True)

                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    seconds = _timed(step, device, sizes.iters)
                except torch.OutOfMemoryError:
                    rows.append({"model": name, "batch": batch, "mode": label, "samples/s": "OOM"})
                    continue
                rate = batch / seconds
                baseline = baseline or rate
                tflops = 6 * macs * rate / 1e12
                rows.append({"model": name, "batch": batch, "mode": label, "samples/s": round(rate, 1),
                             "x fp32": round(rate / baseline, 2),
                             "peak GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                             if device.type == "cuda" else "-",
                             "TFLOP/s": round(tflops, 2), "MFU": f"{tflops / peak_tflops:.1%}"})
                del model, runner, images
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def data_rows(stores: list[Path], sizes: Sizes, best_rate: float | None) -> list[dict]:
    from celltune.trainables.config import DataConfig
    from celltune.trainables.data import build_training_streams

    data = DataConfig(stores=stores, configuration="all-gt+st", crop=_crops(stores, sizes), batch_size=8,
                      normalization="log", augment={"rotation_p": 0.5, "intensity_jitter": 0.1})
    streams = build_training_streams(data, target_kind="mask_marker", margin=8, size_multiple=16, rank=0,
                                     world_size=1, seed=0, weights=False, pooled=False)
    rows = []
    for name in data.dataset_names:
        streams.next(name, torch.device("cpu"))  # open the store, fill caches
        batches = max(2, sizes.iters)
        start = time.perf_counter()
        for _ in range(batches):
            streams.next(name, torch.device("cpu"))
        rate = batches * data.batch_size_for(name) / (time.perf_counter() - start)
        needed = math.ceil(best_rate / rate) if best_rate else None
        rows.append({"dataset": name, "crop": data.crop_for(name), "crops/s per worker": round(rate, 1),
                     "workers for the best step rate": needed if needed is not None else "-"})
    return rows


def _crops(stores: list[Path], sizes: Sizes) -> dict[str, int]:
    """The section's crop side, or a store's shorter frame side where that is smaller (multiples of 16)."""
    from celltune.data_prep.reader import SequenceReader
    from celltune.trainables.data import dataset_frames

    crops = {}
    for store in stores:
        sequences = {f.sequence for f in dataset_frames(store, "all-gt+st", "train")}
        side = min(min(SequenceReader(str(store), sequence).frame_shape[-2:]) for sequence in sequences)
        crops[store.name.removesuffix(".zarr")] = min(sizes.side, side // 16 * 16)
    return crops


def train_rows(stores: list[Path], device: torch.device, sizes: Sizes, minutes: float) -> list[dict]:
    from celltune.trainables.config import TrainConfig
    from celltune.trainables.local_train import fit_local

    crop = _crops(stores, sizes)
    config = TrainConfig.model_validate({
        "data": {"stores": [str(s) for s in stores], "configuration": "all-gt+st", "crop": crop,
                 "batch_size": 2 if sizes is TINY else 8,
                 "normalization": "log", "loader_workers": 0 if sizes is TINY else 4},
        "model": {"name": "xbnet", "options": dict(sizes.width)},
        "loss": {"name": "ce", "options": {"class_weights": [1, 10, 5]}},
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "scheduler": {"name": "one_cycle", "warmup_fraction": 0.1, "eta_min": 1e-5},
        "training": {"scheme": "acc", "epochs": 2 if sizes is TINY else 100_000,
                     "steps_per_epoch": 2 if sizes is TINY else 20, "eval_every": 1 if sizes is TINY else 5,
                     "max_minutes": minutes, "precision": "auto"},
    })
    waits: list[float] = []
    rates: list[float] = []

    class Collect:
        def on_start(self, config, model_config) -> None: ...
        def on_evaluation(self, step, epoch, metrics, examples) -> None: ...
        def on_end(self, best) -> None: ...

        def on_steps(self, records) -> None:
            for _, values in records:
                if "data_wait_share" in values:
                    waits.append(values["data_wait_share"])
                    rates.append(values["steps_per_second"])

    with tempfile.TemporaryDirectory(prefix="celltune-gpu-check-") as folder:
        result = fit_local(config, run_folder=Path(folder) / "run", device=str(device), observer=Collect())
    metrics = result.metrics
    row = {"run": f"xbnet {'tiny' if sizes is TINY else 'full width'}, acc, {minutes:g} min",
           "steps": int(metrics.get("step", 0)), "steps/s": round(float(np.mean(rates)), 2) if rates else "-",
           "data wait": f"{float(np.mean(waits)):.1%}" if waits else "-"}
    for key, value in sorted(metrics.items()):
        if key.startswith("best/seg"):
            row[key.removeprefix("best/")] = round(value, 3)
    return [row]


def predict_rows(device: torch.device, sizes: Sizes) -> list[dict]:
    from celltune.platform.cell_tracker import track_sequence
    from celltune.trainables.architectures import build_model
    from celltune.trainables.inference import predict_probabilities
    from celltune.trainables.target_kinds import postprocess

    rows = []
    for name in MODELS:
        model = build_model(name, **sizes.width).eval()
        rng = np.random.default_rng(0)
        frames = rng.random((sizes.predict_frames, sizes.predict_side, sizes.predict_side), dtype=np.float32)
        kind = model.spec.target_kind
        activation = "softmax" if kind == "tertiary" else "sigmoid"
        predict_probabilities(model, frames[:1], size_multiple=model.spec.size_multiple, activation=activation,
                              device=device)  # warm-up
        _sync(device)
        start = time.perf_counter()
        probabilities = predict_probabilities(model, frames, size_multiple=model.spec.size_multiple,
                                              activation=activation, device=device, batch_size=8)
        _sync(device)
        network = time.perf_counter() - start
        start = time.perf_counter()
        labels = np.stack([postprocess(kind, p) for p in probabilities])
        post = time.perf_counter() - start
        start = time.perf_counter()
        track_sequence(labels)
        tracking = time.perf_counter() - start
        total = network + post + tracking
        rows.append({"model": name, "frame": f"{sizes.predict_side}x{sizes.predict_side}",
                     "network frames/s": round(len(frames) / network, 1),
                     "end-to-end frames/s": round(len(frames) / total, 1),
                     "post-processing": f"{post / total:.0%}", "tracking": f"{tracking / total:.0%}"})
    return rows


def _against_fp32(compiled: list[dict], eager: list[dict]) -> None:
    """The compile section's ratio against the eager fp32 row of the same model and batch, where there is one."""
    fp32 = {(r["model"], r["batch"]): r["samples/s"] for r in eager
            if r["mode"] == "fp32" and isinstance(r.get("samples/s"), float)}
    for row in compiled:
        base = fp32.get((row["model"], row["batch"]))
        if base and isinstance(row.get("samples/s"), float):
            row["x fp32"] = round(row["samples/s"] / base, 2)
        else:
            row.pop("x fp32", None)


def markdown(title: str, rows: list[dict]) -> str:
    if not rows:
        return f"## {title}\n\n(no rows)\n"
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = [f"## {title}", "", "| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(str(row.get(k, "-")) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=Path, required=True, help="folder of prepared stores (data prep)")
    parser.add_argument("--minutes", type=float, default=4.0, help="length of the universal run (default 4)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is present")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: the CI check of this script")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (a last section)")
    parser.add_argument("--compile-models", default=",".join(MODELS), help="models the compile section times")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the chip's dense bf16 TFLOP/s for MFU (default 989, H200)")
    parser.add_argument("--sections", default="models,train,data,predict", help="comma-separated sections")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables (markdown) and JSON here")
    args = parser.parse_args(argv)
    stores = sorted(p for p in args.stores.glob("*.zarr") if p.is_dir())
    if not stores:
        parser.error(f"--stores {args.stores}: no .zarr stores (run `celltune data prep`)")
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda:0")
    sizes = TINY if args.tiny else FULL
    sections = args.sections.split(",")
    header = (f"celltune GPU check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
              f"torch {torch.__version__}, {'tiny' if args.tiny else 'full'} sizes")
    print(header, flush=True)
    tables: dict[str, list[dict]] = {}
    failed: list[str] = []

    def best_rate() -> float | None:
        rates = [r["samples/s"] for r in tables.get("models", []) if isinstance(r.get("samples/s"), float)]
        return max(rates) if rates else None

    runs: dict[str, tuple[str, Callable[[], list[dict]]]] = {
        "models": ("models: forward + backward",
                   lambda: model_rows(device, sizes, compile_=False, peak_tflops=args.peak_tflops)),
        "train": ("train: universal acc run", lambda: train_rows(stores, device, sizes, args.minutes)),
        "data": ("data: augmented random crops", lambda: data_rows(stores, sizes, best_rate())),
        "predict": ("predict", lambda: predict_rows(device, sizes)),
        "compile": ("models: torch.compile at the largest batch",
                    lambda: model_rows(device, sizes, compile_=True, peak_tflops=args.peak_tflops,
                                       models=tuple(m.strip() for m in args.compile_models.split(",")))),
    }
    unknown = [s for s in sections if s not in runs]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)} (known: {', '.join(runs)})")
    if args.compile and "compile" not in sections:
        sections.append("compile")
    for key in (k for k in runs if k in sections):  # the most wanted figures first: one device run, maybe cut short
        title, run_section = runs[key]
        started = time.perf_counter()
        try:
            tables[key] = run_section()
        except Exception as error:  # one broken section must not cost the others' figures
            failed.append(key)
            traceback.print_exc()
            print(f"section {key} failed: {type(error).__name__}: {error}", flush=True)
            continue
        if key == "compile":
            _against_fp32(tables[key], tables.get("models", []))
        print(markdown(title, tables[key]) + f"\n({key}: {time.perf_counter() - started:.0f} s)\n", flush=True)
        if args.out is not None:  # after every section, so a run stopped at its time limit keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(header + "\n\n" + "\n".join(markdown(runs[k][0], v) for k, v in tables.items()))
            args.out.with_suffix(".json").write_text(json.dumps({"header": header, **tables}, indent=2))
    if failed:
        print(f"failed sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
