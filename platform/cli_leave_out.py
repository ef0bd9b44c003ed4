"""`celltune leave-out`: train a recipe without one dataset, score it there zero-shot, and draw the few-shot
curve (fine-tuned from that model against from scratch, at equal budget). See :mod:`celltune.platform.leave_out`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from celltune.platform.command_options import DEFAULT_RUN_STORAGE as DEFAULT_STORAGE


def add_parser(commands: argparse._SubParsersAction) -> None:
    from celltune.platform.leave_out import DEFAULT_EXPERIMENT, DEFAULT_SHOTS

    parser = commands.add_parser(
        "leave-out", help="leave one dataset out of a recipe: zero-shot SEG there and the few-shot curve")
    parser.add_argument("--config", type=Path, required=True, help="the recipe: a training config over several stores")
    parser.add_argument("--dataset", required=True, metavar="NAME", help="the dataset to leave out (a store's name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set training.max_minutes=10 (repeatable)")
    parser.add_argument("--shots", default=DEFAULT_SHOTS, metavar="K,K,...",
                        help=f"GT frames of the left-out dataset to train on; 0 is zero-shot (default {DEFAULT_SHOTS})")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=None,
                        help="training minutes of each fine-tuning and each scratch run (default 5)")
    budget.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of each fine-tuning and each scratch run instead: the same work on a "
                             "busy machine as on a quiet one")
    parser.add_argument("--universal", default=None, metavar="URI",
                        help="use this model (models:/NAME@ALIAS or a checkpoint folder) instead of training the "
                             "recipe on the other datasets")
    parser.add_argument("--name", default=None, help="study name (default: leave-out-<dataset>-<timestamp>)")
    parser.add_argument("--storage", type=Path, default=DEFAULT_STORAGE,
                        help=f"Ray storage folder for the runs (default ./{DEFAULT_STORAGE})")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")
    parser.set_defaults(handler=_leave_out)


def _leave_out(args: argparse.Namespace) -> int:
    from celltune.platform.config_io import load_config
    from celltune.platform.console import LOG_FILE, library_output_to
    from celltune.platform.leave_out import ShotBudget, parse_shots, run_leave_out
    from celltune.trainables.config import TrainConfig

    if args.steps is not None:
        budget = ShotBudget(steps=args.steps)
    else:
        budget = ShotBudget(minutes=5.0 if args.minutes is None else args.minutes)
    shots = parse_shots(args.shots)
    recipe = load_config(TrainConfig, args.config, args.overrides)
    name = args.name or time.strftime(f"leave-out-{args.dataset}-%Y%m%d-%H%M%S")

    def progress(shot) -> None:
        print(f"k={shot.label}: SEG from the universal model {_fmt(shot.from_universal)}, from scratch "
              f"{_fmt(shot.from_scratch)}", flush=True)

    log_file = args.storage.resolve() / f"{name}-{LOG_FILE}"  # beside the study's runs <name>-*
    with library_output_to(log_file, verbose=args.verbose, preload=("ray", "mlflow")) as log:
        if log:
            print(f"study {name}: library output in {log}", flush=True)
        report, run_id = run_leave_out(recipe, args.dataset, shots=shots, budget=budget,
                                       storage_path=args.storage, name=name, universal=args.universal,
                                       tracking_uri=args.tracking_uri, experiment=args.experiment, on_shot=progress)
    print(report.format())
    print(f"MLflow run {run_id} (table and curve under leave_out/)")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
