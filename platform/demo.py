"""The main job on embedded defaults: generate sample data, prepare it, and show what was built.

Everything lands in one working folder (default ``./celltune-demo``) so a user can look at it, rerun it
(data prep is incremental) or delete it. Later stages (search, registry, prediction) extend this job.
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


def _demo(args) -> int:
    from celltune.data_prep.info import describe_stores

    paths = run_demo(args.workdir, address=args.address, show_progress=not args.no_progress)
    print(describe_stores(paths.stores))
    print(f"\nsample data: {paths.ctc}\nstores:      {paths.stores}")
    return 0
