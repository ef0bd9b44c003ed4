"""`celltune predict`: segment and track new sequences with a trained model, written as CTC result folders.

The handler parses arguments, loads the model through :mod:`celltune.platform.model_registry` and calls
:func:`celltune.platform.predict.predict_to_folder`. The model options (device, tiling, thresholds, Ray)
are shared with ``celltune evaluate --model``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_LAYOUT = """\
input:
  a sequence folder (DS/01 with t000.tif ...) or a TIFF stack   ->  OUT/mask000.tif ... + OUT/res_track.txt
  a dataset folder (DS with 01/ 02/) or a celltune store       ->  OUT/01_RES/, OUT/02_RES/, ...
--set takes post-processing thresholds of the model's target kind (min_area=40, hole_area=..., grow=...,
mask_threshold=..., marker_threshold=..., threshold=..., watershed=..., min_distance=...) and tracker settings
as track.KEY (track.max_displacement=30, track.min_overlap=0.2, track.divisions=false, track.spacing=[3,1,1]).
"""


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
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average over the 8 flips and quarter turns (8x the time)")
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


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict", help="segment and track sequences with a trained model (CTC result folders)",
        epilog=_LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, metavar="URI",
                        help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    parser.add_argument("--input", type=Path, required=True, metavar="PATH",
                        help="a sequence folder, a TIFF stack, a dataset folder or a celltune store")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the results go")
    add_model_options(parser)
    parser.set_defaults(handler=_predict)


def split_overrides(items: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` values as (post-processing thresholds, tracker settings); ``track.KEY`` goes to the tracker.

    Raises:
        UserInputError: a malformed item or a dotted key other than ``track.KEY``.
    """
    from celltune.data_prep.errors import UserInputError
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
    from celltune.data_prep.errors import UserInputError
    from celltune.platform.predict import DEFAULT_MAX_TILE, PredictOptions

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


def thresholds(loaded, dataset: str | None, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The model's thresholds (tuned for ``dataset`` when the search tuned them) with ``overrides`` on top."""
    tuned = loaded.description.get("postprocess_per_dataset") or {}
    if dataset is not None and dataset not in tuned:
        logger.warning("no thresholds tuned for dataset %r (tuned: %s); using the model's default ones", dataset,
                       ", ".join(sorted(tuned)) or "none")
    return {**loaded.postprocess_params(dataset), **overrides}


def with_model_scale(options, description: Mapping[str, Any], dataset: str | None):
    """``options`` with the model's resampling factor for ``dataset`` unless ``--scale`` set one."""
    from dataclasses import replace

    from celltune.platform.predict import model_scale

    return options if options.scale is not None else replace(options, scale=model_scale(description, dataset))


def _predict(args: argparse.Namespace) -> int:
    from celltune.platform.model_registry import load_model
    from celltune.platform.predict import check_output, find_sequences, predict_to_folder

    check_output(args.out, args.overwrite)  # before loading anything
    overrides, tracking = split_overrides(args.overrides)
    options = prediction_options(args, tracking)
    sources, collection = find_sequences(args.input)
    loaded = load_model(args.model, args.tracking_uri)
    params = thresholds(loaded, args.dataset, overrides)
    options = with_model_scale(options, loaded.description, args.dataset)
    summaries = predict_to_folder(
        loaded.model, loaded.description, params, args.input, args.out, options, sources=sources,
        collection=collection, use_ray=False if args.no_ray else None, address=args.address,
        overwrite=args.overwrite, model_uri=args.model, show_progress=not args.no_progress,
    )
    for summary in summaries:
        print(summary.line())
    print(f"wrote {len(summaries)} result folder(s) to {args.out}")
    return 0
