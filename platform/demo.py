"""The main job on embedded defaults: generate sample data, prepare it, train on it, and say where to look.

Everything lands in one working folder (default ``./celltune-demo``): the CTC-layout sample data, the stores,
Ray's run folders and the MLflow SQLite database, so a user can look at it, rerun it (data prep is
incremental) or delete it. Later stages (search, registry, prediction) extend this job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

# Two small datasets of different look and dtype, so universal training has something to pool.
DEMO_DATASETS = (
    {"name": "Synth-Round", "ndim": 2, "sequences": 2, "frames": 12, "size": 128, "cells": 8, "dtype": "uint8",
     "seed": 1},
    {"name": "Synth-Dense", "ndim": 2, "sequences": 2, "frames": 12, "size": 160, "cells": 14, "dtype": "uint16",
     "seed": 2},
)


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def ctc(self) -> Path:
        return self.root / "ctc"

    @property
    def stores(self) -> Path:
        return self.root / "stores"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


DEMO_TRAIN_CONFIG = Path(__file__).resolve().parent / "configs" / "demo_train.yaml"


def run_demo(workdir: Path, address: str | None = None, show_progress: bool = True) -> DemoPaths:
    """Generate the demo datasets (once) and convert them to stores, returning where everything is."""
    from celltune.data_prep.prep import prep_datasets
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    paths = DemoPaths(workdir.resolve())
    paths.ctc.mkdir(parents=True, exist_ok=True)
    for fields in DEMO_DATASETS:
        if not (paths.ctc / fields["name"]).exists():
            generate_dataset(paths.ctc, SynthSpec(**fields))
    prep_datasets(
        paths.ctc, paths.stores, datasets=[f["name"] for f in DEMO_DATASETS], address=address,
        show_progress=show_progress,
    )
    return paths


def add_parser(commands) -> None:
    demo = commands.add_parser("demo", help="run the main job on generated sample data (local, minutes on 2 cores)")
    demo.add_argument("--workdir", type=Path, default=Path("celltune-demo"),
                      help="folder for data, stores and runs (default ./celltune-demo)")
    demo.add_argument("--address", default=None, help="Ray cluster address (default: local Ray on 127.0.0.1)")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=_demo)


def train_demo(paths: DemoPaths, address: str | None = None):
    """Universal training of the demo config on the demo stores, tracked in the demo's MLflow database."""
    from celltune.platform.config_io import load_config
    from celltune.platform.train_run import run_training
    from celltune.trainables.config import TrainConfig

    config = load_config(TrainConfig, DEMO_TRAIN_CONFIG)
    stores = [paths.stores / Path(store).name for store in config.data.stores]
    config = config.model_copy(update={"data": config.data.model_copy(update={"stores": stores})})
    return run_training(config, storage_path=paths.runs, tracking_uri=paths.tracking_uri, address=address)


def _demo(args) -> int:
    from celltune.data_prep.info import describe_stores

    paths = run_demo(args.workdir, address=args.address, show_progress=not args.no_progress)
    print(describe_stores(paths.stores))
    result = train_demo(paths, address=args.address)
    scores = ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.metrics.items()) if k.startswith("best/seg"))
    print(f"\ntrained {result.name}: {scores}")
    print(f"\nsample data: {paths.ctc}\nstores:      {paths.stores}\ncheckpoint:  {result.checkpoint_dir}")
    print(f"look at the runs: mlflow ui --backend-store-uri {paths.tracking_uri} --host 127.0.0.1")
    return 0
