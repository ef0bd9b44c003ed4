"""Universal against individual training at equal budget (Guo et al.'s claim), read back from MLflow.

The universal arm is ``celltune train --config platform/configs/cpu_universal.yaml`` (one model, three datasets,
``training.max_minutes``). The individual arm trains the same recipe once per dataset, each for a third of that
budget, one after the other, with the dataset's own scale, crop and batch from the config. Both arms run here, one
after the other (``--reuse-universal`` reads an earlier universal run instead). The table prints each run's best
validation SEG per dataset as logged in MLflow (``best/seg/<dataset>``).

    .venv/bin/python benchmarks/universal_vs_individual.py --stores stores [--universal-run universal-cpu20] \\
        [--tracking-uri sqlite:///mlflow.db] [--reuse-universal] [--skip-training]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "platform" / "configs" / "cpu_universal.yaml"


def individual_overrides(config: dict, dataset: str, stores: Path, minutes: float) -> list[str]:
    """``--set`` values training the recipe on ``dataset`` alone for ``minutes``."""
    data = config["data"]
    per_dataset = {key: data[key][dataset] if isinstance(data[key], dict) else data[key]
                   for key in ("scale", "crop", "batch_size")}
    return [f"data.stores=[{stores / f'{dataset}.zarr'}]", *(f"data.{k}={v}" for k, v in per_dataset.items()),
            f"training.max_minutes={minutes:.4g}"]


def best_seg(client, experiment: str, run_name: str) -> dict[str, float]:
    found = client.search_experiments(filter_string=f"name = '{experiment}'")
    if not found:
        raise SystemExit(f"no MLflow experiment {experiment!r}")
    runs = client.search_runs([found[0].experiment_id], filter_string=f"attributes.run_name = '{run_name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise SystemExit(f"no MLflow run named {run_name!r} in {experiment!r}")
    return {k.removeprefix("best/seg/"): v for k, v in runs[0].data.metrics.items() if k.startswith("best/seg/")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", type=Path, required=True)
    parser.add_argument("--universal-run", default="universal-cpu20", help="name of the universal run")
    parser.add_argument("--reuse-universal", action="store_true",
                        help="read the finished universal run named --universal-run instead of training it")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    parser.add_argument("--prefix", default="alone-", help="individual runs are named PREFIX<dataset>")
    parser.add_argument("--skip-training", action="store_true", help="only read the runs back")
    parser.add_argument("--only", action="append", metavar="DATASET",
                        help="train only this dataset's individual run (repeatable; to finish an interrupted run)")
    args = parser.parse_args()
    config = yaml.safe_load(CONFIG.read_text())
    datasets = [Path(store).name.removesuffix(".zarr") for store in config["data"]["stores"]]
    minutes = config["training"]["max_minutes"] / len(datasets)
    stores = args.stores.resolve()
    unknown = sorted(set(args.only or ()) - set(datasets))
    if unknown:
        raise SystemExit(f"--only {unknown[0]}: not a dataset of {CONFIG.name} ({', '.join(datasets)})")
    if not args.skip_training:
        runs = [(f"{args.prefix}{dataset}", individual_overrides(config, dataset, stores, minutes))
                for dataset in datasets if not args.only or dataset in args.only]
        if not args.reuse_universal:
            universal_stores = ", ".join(str(stores / f"{dataset}.zarr") for dataset in datasets)
            runs.insert(0, (args.universal_run, [f"data.stores=[{universal_stores}]"]))
        for name, overrides in runs:
            command = [sys.executable, "-m", "celltune.platform", "train", "--config", str(CONFIG),
                       "--tracking-uri", args.tracking_uri, "--name", name]
            for item in overrides:
                command += ["--set", item]
            subprocess.run(command, check=True)

    from mlflow import MlflowClient

    client = MlflowClient(args.tracking_uri)
    universal = best_seg(client, "celltune-train", args.universal_run)
    alone = {d: best_seg(client, "celltune-train", f"{args.prefix}{d}").get(d.replace("+", "plus")) for d in datasets}
    names = [d.replace("+", "plus") for d in datasets]
    print(f"| validation SEG | {' | '.join(datasets)} | mean |")
    print("|" + "---|" * (len(datasets) + 2))
    row = [universal.get(n) for n in names]
    print(f"| universal, {config['training']['max_minutes']:g} min | " + " | ".join(f"{v:.3f}" for v in row)
          + f" | {sum(row) / len(row):.3f} |")
    row = [alone[d] for d in datasets]
    print(f"| individual, {minutes:.3g} min each | " + " | ".join(f"{v:.3f}" for v in row)
          + f" | {sum(row) / len(row):.3f} |")


if __name__ == "__main__":
    main()
