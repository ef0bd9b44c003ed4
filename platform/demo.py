"""The main job on embedded defaults: generate sample data, prepare it, train on it, and say where to look.

Everything lands in one working folder (default ``./celltune-demo``): the CTC-layout sample data, the stores,
Ray's search folders and the MLflow SQLite database, so a user can look at it, rerun it (data prep is
incremental, every search gets a new name) or delete it. The job: generate two datasets and a held-out
sequence, prepare the stores, search the shipped ``demo`` space on local Ray, register the best model as
``celltune-demo@candidate``, then predict the held-out sequence with it and score the result.
"""

from __future__ import annotations

import logging
import time
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
    def holdout(self) -> Path:
        """A sequence no trial has seen: ``holdout/<dataset>/01`` with its ``01_GT``."""
        return self.root / "holdout"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


DEMO_MODEL = "celltune-demo"
HOLDOUT_SEED = 101


def run_demo(workdir: Path, address: str | None = None, show_progress: bool = True) -> DemoPaths:
    """Generate the demo datasets (once) and convert them to stores, returning where everything is."""
    from celltune.data_prep.prep import prep_datasets
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    paths = DemoPaths(workdir.resolve())
    paths.ctc.mkdir(parents=True, exist_ok=True)
    for fields in DEMO_DATASETS:
        if not (paths.ctc / fields["name"]).exists():
            generate_dataset(paths.ctc, SynthSpec(**fields))
    holdout = {**DEMO_DATASETS[0], "sequences": 1, "seed": HOLDOUT_SEED}
    if not (paths.holdout / holdout["name"]).exists():
        generate_dataset(paths.holdout, SynthSpec(**holdout))
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


def search_demo(paths: DemoPaths, address: str | None = None, show_progress: bool = True):
    """The shipped ``demo`` space on the demo stores; the best model becomes ``celltune-demo@candidate``."""
    from celltune.platform.search_run import run_search
    from celltune.search_spaces.space import load_space

    space = load_space("demo", stores_dir=paths.stores)
    return run_search(space, storage=str(paths.runs), name=time.strftime("demo-%Y%m%d-%H%M%S"),
                      tracking_uri=paths.tracking_uri, address=address, register_as=DEMO_MODEL,
                      show_progress=show_progress)


def score_holdout(paths: DemoPaths, result, address: str | None = None, show_progress: bool = True):
    """Predict the held-out sequence with the registered model, score it, log the scores to its version."""
    from celltune.platform.model_evaluation import evaluate_model, log_evaluation
    from celltune.platform.model_registry import load_model
    from celltune.platform.predict_options import PredictOptions

    loaded = load_model(f"models:/{result.registered_name}/{result.registered_version}", paths.tracking_uri)
    dataset = DEMO_DATASETS[0]["name"]
    out = paths.predictions / result.name
    table, _ = evaluate_model(loaded, paths.holdout / dataset, out=out, dataset=dataset, options=PredictOptions(),
                              address=address, show_progress=show_progress)
    log_evaluation(table, f"{dataset}-holdout", run_id=loaded.ref.run_id, tracking_uri=paths.tracking_uri)
    return table, out


def _demo(args) -> int:
    from celltune.platform.console import LIBRARIES, LOG_FILE, library_output_to
    from celltune.platform.search_run import search_summary

    started = time.monotonic()
    log_file = args.workdir.resolve() / LOG_FILE
    with library_output_to(log_file, verbose=getattr(args, "verbose", False), preload=LIBRARIES) as log:
        if log:
            print(f"demo: library output in {log}", flush=True)
        paths = run_demo(args.workdir, address=args.address, show_progress=not args.no_progress)
        print(f"sample data: {len(DEMO_DATASETS)} synthetic datasets in CTC layout, prepared as stores in "
              f"{paths.stores} (`celltune data info {paths.stores}` describes them)", flush=True)
        result = search_demo(paths, address=args.address, show_progress=not args.no_progress)
        print("\n" + search_summary(result))
        if result.registered_version is None:
            print("no trial produced a checkpoint, so nothing was registered")
            return 1
        table, predictions = score_holdout(paths, result, address=args.address,
                                           show_progress=not args.no_progress)
    model = f"models:/{result.registered_name}/{result.registered_version}"
    print(f"\nheld-out sequence {paths.holdout / DEMO_DATASETS[0]['name'] / '01'} predicted with {model}:")
    print(table.format())
    print(f"\nsample data: {paths.ctc}\nstores:      {paths.stores}\nsearches:    {paths.runs}\n"
          f"predictions: {predictions}  (CTC result format: maskNNN.tif + res_track.txt)")
    print(f"finished in {time.monotonic() - started:.0f} s" + (f"; library output in {log}" if log else "")
          + "\n\nnext:")
    uri = paths.tracking_uri
    print(f"  celltune ui --tracking-uri {uri}        # runs, curves, overlays, registry (127.0.0.1:5000)")
    print(f"  celltune models show {result.registered_name} --tracking-uri {uri}")
    print(f"  celltune models promote {result.registered_name} {result.registered_version} --tracking-uri {uri}")
    print(f"  celltune predict --model models:/{result.registered_name}@champion --input YOUR_SEQUENCE "
          f"--out results --tracking-uri {uri}")
    return 0
