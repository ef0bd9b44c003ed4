"""One recipe-ablation run: the training loop in this process on one thread (no Ray, no MLflow), printing each
evaluation's SEG per dataset as a JSON line (also appended to OUT.jsonl) and keeping the best checkpoint in OUT.ckpt.

The README's table of what the CPU recipe needed came from these configs, each run alone on one core of the
2-core machine, two runs side by side:

    .venv/bin/python benchmarks/recipe_ablation/run.py OUT benchmarks/recipe_ablation/3_mask_marker_hela025.yaml \\
        --set 'data.stores=[stores/DIC-C2DH-HeLa.zarr, stores/Fluo-N2DH-GOWT1.zarr, stores/Fluo-N2DH-SIM+.zarr]'
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from celltune.platform.config_io import load_config
from celltune.trainables.config import TrainConfig
from celltune.trainables.train_loop import WorkerContext, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="OUT.jsonl gets the evaluations, OUT.ckpt the best checkpoint")
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(TrainConfig, args.config, args.overrides)
    started = time.monotonic()
    log = args.out.with_suffix(".jsonl")

    class PrintEvaluations:
        def on_start(self, config, model_config): ...
        def on_steps(self, records): ...
        def on_end(self, best): ...

        def on_evaluation(self, step, epoch, metrics, examples):
            record = {"seconds": round(time.monotonic() - started), "step": step, "epoch": epoch,
                      **{k: round(v, 4) for k, v in metrics.items() if k.startswith("seg")}}
            with log.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)

    def keep(metrics, checkpoint):
        if checkpoint is not None:
            target = args.out.with_suffix(".ckpt")
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(checkpoint, target)

    context = WorkerContext(report=keep, progress_bar=lambda total, initial, desc: tqdm(disable=True))
    result = train(config, context, PrintEvaluations())
    print(json.dumps({"best": {k: round(v, 4) for k, v in result.best.items() if k.startswith("seg")},
                      "steps": result.step, "seconds": round(time.monotonic() - started)}))


if __name__ == "__main__":
    main()
