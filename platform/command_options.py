"""Options and ``--set`` parsing shared by the commands that run a model on sequences (`predict`,
`evaluate --model`, `models transfer`): parsing only, so no command module imports another."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

DEFAULT_RUN_STORAGE = Path("celltune-runs")  # where `train` and `leave-out` keep their Ray runs by default


def add_model_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, progress: bool = True) -> None:
    """Options of running a model on sequences, shared by `predict` and `evaluate --model`."""
    parser.add_argument("--device", default="auto",
                        help="where the network runs: auto (default: CUDA where present, else CPU), cpu, cuda[:N]")
    parser.add_argument("--tile", type=int, default=None, metavar="N",
                        help="tile frames whose (padded) side exceeds N px (default 1024; smaller forces tiling)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="frames or tiles per forward pass")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a threshold or tracker setting, e.g. --set min_area=40 (repeatable)")
    parser.add_argument("--dataset", default=None, metavar="NAME",
                        help="use the thresholds the search tuned for this dataset (default: the model's default)")
    parser.add_argument("--scale", type=float, default=None, metavar="FACTOR",
                        help="resample frames by this factor for the network (default: the factor the model was "
                             "trained at for --dataset, or its only one)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="test-time augmentation: average over the 8 flips and quarter turns (8x the time); "
                             "default: as the model card says (off unless the model was chosen with it)")
    parser.add_argument("--no-track", action="store_true",
                        help="skip tracking: every object is its own one-frame track")
    parser.add_argument("--address", default=None,
                        help="Ray cluster address; sequences then run as Ray tasks (default: local Ray for 2+ "
                             "sequences)")
    parser.add_argument("--no-ray", action="store_true", help="predict the sequences one by one in this process")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI for models:/ URIs (default: $MLFLOW_TRACKING_URI or "
                             "sqlite:///./mlflow.db)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def split_overrides(items: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` values as (post-processing thresholds, tracker settings); ``track.KEY`` goes to the tracker.

    Raises:
        UserInputError: a malformed item or a dotted key other than ``track.KEY``.
    """
    from celltune.data_prep.common import UserInputError
    from celltune.platform.config_io import apply_overrides

    tree = apply_overrides({}, items)
    tracking = tree.pop("track", {})
    if not isinstance(tracking, dict):
        raise UserInputError(f"--set track={tracking!r}: give tracker settings as track.KEY=VALUE")
    for key, value in tree.items():
        if isinstance(value, dict):
            raise UserInputError(f"--set {key}.{next(iter(value), '')}: only thresholds (min_area=40) and "
                                 f"track.KEY are accepted")
    return tree, tracking


def prediction_options(args: argparse.Namespace, tracking: Mapping[str, Any]):
    """PredictOptions from the shared model options."""
    from celltune.data_prep.common import UserInputError
    from celltune.platform.predict_options import DEFAULT_MAX_TILE, PredictOptions

    if args.tile is not None and args.tile < 1:
        raise UserInputError(f"--tile {args.tile}: must be a positive number of pixels")
    if args.batch_size < 1:
        raise UserInputError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.scale is not None and not 0.1 <= args.scale <= 4:
        raise UserInputError(f"--scale {args.scale}: must lie in [0.1, 4]")
    if args.no_ray and args.address:
        raise UserInputError(f"--no-ray and --address {args.address}: choose one (Ray tasks on that cluster, or "
                             f"this process)")
    from celltune.trainables.inference import resolve_device

    device = str(resolve_device(args.device))  # auto becomes a concrete device: Ray tasks ask for a GPU by it
    return PredictOptions(device=device, max_tile=args.tile or DEFAULT_MAX_TILE, batch_size=args.batch_size,
                          track=not args.no_track, tracking=dict(tracking), scale=args.scale, tta=args.tta)
