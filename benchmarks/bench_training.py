"""Training throughput through Ray Train against the plain PyTorch loop, same model and data, same run.

Goal: Ray Train (one worker) costs at most 10% of the plain loop's samples/s. Each architecture trains a few
epochs on the synthetic demo datasets (scheme acc, two datasets); samples/s is measured over the last epoch's
optimizer steps (after warm-up, before evaluation), so process start-up is reported separately.

    .venv/bin/python benchmarks/bench_training.py [--epochs 3] [--steps 6] [--crop 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from celltune.data_prep.ray_session import ensure_ray
from celltune.platform.demo import run_demo
from celltune.trainables import ray_train
from celltune.trainables.config import TrainConfig
from celltune.trainables.train_loop import WorkerContext, train

ARCHITECTURES = {
    "unet": ({"width": 8}, "ce"),
    "xbnet": ({"width": 8}, "ce"),
    "u_se_resnet": ({"width": 8, "layers": [1, 1, 1, 1]}, "edge_bce"),
}


def config_for(stores: Path, name: str, options: dict, loss: str, args) -> TrainConfig:
    return TrainConfig.model_validate({
        "data": {"stores": [str(stores / "Synth-Round.zarr"), str(stores / "Synth-Dense.zarr")],
                 "configuration": "all-st", "crop": args.crop, "batch_size": args.batch},
        "model": {"name": name, "options": options},
        "loss": {"name": loss},
        "scheduler": {"name": "constant"},
        "training": {"epochs": args.epochs, "steps_per_epoch": args.steps, "eval_every": 1000},
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="minibatches per dataset per epoch")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="celltune-bench-train-"))
    stores = run_demo(work, show_progress=False).stores
    ensure_ray(num_cpus=2)
    # Ray gives each worker as many threads as CPUs it asked for (1); the plain loop gets the same.
    torch.set_num_threads(1)
    samples_per_step = args.batch * 2  # scheme acc: one minibatch from each of the two datasets
    rows = []
    for name, (options, loss) in ARCHITECTURES.items():
        config = config_for(stores, name, options, loss, args)
        started = time.perf_counter()
        plain = train(config, WorkerContext(progress_bar=_no_bar))
        plain_wall = time.perf_counter() - started
        started = time.perf_counter()
        result = ray_train.fit(config, storage_path=work / "ray", name=f"bench-{name}")
        ray_wall = time.perf_counter() - started
        plain_rate = plain.last["steps_per_second"] * samples_per_step
        ray_rate = result.metrics["steps_per_second"] * samples_per_step
        rows.append((name, plain_rate, ray_rate, ray_rate / plain_rate, plain_wall, ray_wall))
    print(f"\ntraining throughput, {args.crop}x{args.crop} crops (+16 px context), "
          f"batch {args.batch} x 2 datasets, CPU")
    header = ("model", "plain samples/s", "ray samples/s", "ray/plain", "plain wall s", "ray wall s")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, plain_rate, ray_rate, ratio, plain_wall, ray_wall in rows:
        print(f"| {name} | {plain_rate:.1f} | {ray_rate:.1f} | {ratio:.2f} | {plain_wall:.1f} | {ray_wall:.1f} |")
    print("goal: ray/plain >= 0.90 (at most 10% overhead); wall times include Ray worker start-up and evaluation")


class _no_bar:
    def __init__(self, **_):
        pass

    def update(self, n=1):
        pass

    def set_description(self, text):
        pass

    def close(self):
        pass


if __name__ == "__main__":
    main()
