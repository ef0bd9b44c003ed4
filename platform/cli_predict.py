"""`celltune predict`: segment and track new sequences with a trained model, written as CTC result folders.

The handler parses arguments, loads the model through :mod:`celltune.platform.model_registry` and calls
:func:`celltune.platform.predict.predict_to_folder`. The model options (device, tiling, thresholds, Ray)
are shared with ``celltune evaluate --model``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from celltune.platform.command_options import add_model_options, prediction_options, split_overrides

logger = logging.getLogger(__name__)

_LAYOUT = """\
input:
  a sequence folder (DS/01 with t000.tif ...) or a TIFF stack   ->  OUT/mask000.tif ... + OUT/res_track.txt
  a dataset folder (DS with 01/ 02/) or a celltune store       ->  OUT/01_RES/, OUT/02_RES/, ...
--set takes the post-processing thresholds of the model's target kind (min_area=40; `celltune models show`
lists a model's) and tracker settings as track.KEY (track.max_displacement=30, track.min_overlap=0.2,
track.divisions=false, track.spacing=[3,1,1]).
"""


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


def _predict(args: argparse.Namespace) -> int:
    from celltune.platform.model_registry import load_model
    from celltune.platform.predict import check_output, predict_to_folder
    from celltune.platform.predict_inputs import find_sequences
    from celltune.platform.predict_options import prediction_thresholds, with_model_scale

    check_output(args.out, args.overwrite)  # before loading anything
    overrides, tracking = split_overrides(args.overrides)
    options = prediction_options(args, tracking)
    sources, collection = find_sequences(args.input)
    loaded = load_model(args.model, args.tracking_uri)
    params = prediction_thresholds(loaded.card, args.dataset, overrides)
    options = with_model_scale(options, loaded.card, args.dataset)
    summaries = predict_to_folder(
        loaded.model, loaded.card, params, args.input, args.out, options, sources=sources,
        collection=collection, use_ray=False if args.no_ray else None, address=args.address,
        overwrite=args.overwrite, model_uri=args.model, show_progress=not args.no_progress,
    )
    for summary in summaries:
        print(summary.line())
    print(f"wrote {len(summaries)} result folder(s) to {args.out}")
    return 0
