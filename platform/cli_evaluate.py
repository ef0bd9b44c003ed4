"""`celltune evaluate`: score CTC result folders (SEG, DET, TRA, OP_CSB, OP_CTB) with py-ctcmetrics.

``--res DIR --gt DIR`` scores existing results (:func:`celltune.platform.evaluate.evaluate_results`);
``--model URI --data DS`` first predicts every sequence of a CTC dataset folder with the model
(:func:`celltune.platform.model_evaluation.evaluate_model`) and, for a registered model, logs the scores to the
run that produced it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from celltune.platform.command_options import add_model_options

logger = logging.getLogger(__name__)

_LAYOUT = """\
layouts:
  one sequence:  --res DS/01_RES --gt DS/01_GT   (or --gt DS)
  a dataset:     --res DIR_WITH_NN_RES --gt DIR_WITH_NN_GT  (every NN_RES is scored against NN_GT)
  a model:       --model URI --data DS [--out DIR]  (predicts DS/NN for every DS/NN_GT/TRA, then scores;
                 a registered model's run gets metrics eval/<DS>/<NN>/<MEASURE> and evaluation/<DS>.txt)
  SEG only:      --model URI --data DS --seg-only  (predicts only the frames with GT SEG, no tracking;
                 SEG and the instance measures, equal to the full path's SEG)
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "evaluate", help="score CTC result folders against the ground truth (SEG, DET, TRA, OP_CSB, OP_CTB)",
        epilog=_LAYOUT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--res", type=Path, default=None, help="a NN_RES folder or a folder of NN_RES folders")
    parser.add_argument("--gt", type=Path, default=None, help="a NN_GT folder or a folder of NN_GT folders")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the scores to OUT")
    parser.add_argument("--no-seg", action="store_true", help="skip SEG (and OP_CSB, OP_CTB)")
    parser.add_argument("--threads", type=int, default=0,
                        help="processes for py-ctcmetrics' mask matching (default 0: one per CPU)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--plots", type=Path, default=None, metavar="DIR",
                        help="also draw the instance precision/recall-vs-IoU curve as DIR/precision_recall.png")
    model = parser.add_argument_group("predict, then score (instead of --res/--gt)")
    model.add_argument("--model", default=None, metavar="URI",
                       help="models:/NAME@ALIAS, models:/NAME/VERSION or a checkpoint folder")
    model.add_argument("--data", type=Path, default=None, metavar="DS",
                       help="a CTC dataset folder (NN/ with tNNN.tif and NN_GT/TRA)")
    model.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="keep the predicted NN_RES folders here (default: a temporary folder)")
    model.add_argument("--seg-only", action="store_true",
                       help="predict only the frames with GT SEG and score SEG (no tracking, DET or TRA)")
    add_model_options(model, progress=False)  # --no-progress is the command's own
    parser.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from celltune.data_prep.common import UserInputError
    from celltune.platform.evaluate import evaluate_results

    if args.threads < 0:
        raise UserInputError(f"--threads {args.threads}: must be >= 0")
    # where the results go is checked before any scoring: a mistake must not cost the run
    if args.json is not None and args.json.is_dir():
        raise UserInputError(f"--json {args.json}: is a folder; name the JSON file to write")
    if args.plots is not None and args.plots.exists() and not args.plots.is_dir():
        raise UserInputError(f"--plots {args.plots}: is a file; name the folder the pictures go to")
    if args.model is not None or args.data is not None:
        return _evaluate_model(args)
    if args.res is None or args.gt is None:
        raise UserInputError("give --res DIR --gt DIR to score results, or --model URI --data DS to predict and score")
    table = evaluate_results(args.res, args.gt, seg=False if args.no_seg else None, threads=args.threads,
                             show_progress=not args.no_progress)
    print(table.format())
    _plot(table, args.plots)
    if args.json is not None:
        table.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _evaluate_model(args: argparse.Namespace) -> int:
    from celltune.data_prep.common import UserInputError
    from celltune.platform.command_options import prediction_options, split_overrides
    from celltune.platform.model_evaluation import dataset_sequences, evaluate_model, log_evaluation
    from celltune.platform.model_registry import load_model
    from celltune.platform.predict import check_output
    from celltune.platform.seg_only import evaluate_seg_only, seg_only_sequences
    from celltune.platform.tracking import default_tracking_uri

    if args.model is None or args.data is None:
        raise UserInputError("--model and --data go together (predict DS with the model, then score it)")
    if args.res is not None or args.gt is not None:
        raise UserInputError("--res/--gt score existing results; leave them out with --model/--data")
    if args.seg_only and (args.no_seg or args.out is not None):
        raise UserInputError(f"--seg-only scores SEG and writes no result folders; leave out "
                             f"{'--no-seg' if args.no_seg else '--out'}")
    if args.out is not None:
        check_output(args.out, args.overwrite)
    overrides, tracking = split_overrides(args.overrides)
    options = prediction_options(args, tracking)
    # bad data fails before the model loads
    sources = seg_only_sequences(args.data) if args.seg_only else dataset_sequences(args.data)
    tracking_uri = args.tracking_uri or default_tracking_uri()
    loaded = load_model(args.model, tracking_uri)
    if args.seg_only:
        table = evaluate_seg_only(loaded, args.data, dataset=args.dataset, overrides=overrides, options=options,
                                  sources=sources, show_progress=not args.no_progress)
    else:
        table, summaries = evaluate_model(
            loaded, args.data, out=args.out, dataset=args.dataset, overrides=overrides, options=options,
            address=args.address, use_ray=False if args.no_ray else None, overwrite=args.overwrite,
            seg=False if args.no_seg else None, threads=args.threads, show_progress=not args.no_progress,
            sources=sources,
        )
        for summary in summaries:
            print(summary.line(folder=args.out is not None))
    print(table.format())
    _plot(table, args.plots)
    if loaded.ref.run_id is not None:
        log_evaluation(table, args.dataset or args.data.resolve().name, run_id=loaded.ref.run_id,
                       tracking_uri=tracking_uri)
        print(f"logged to MLflow run {loaded.ref.run_id} ({loaded.ref.name} version {loaded.ref.version})")
    if args.json is not None:
        table.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _plot(table, folder: Path | None) -> None:
    from celltune.platform.evaluate import write_precision_recall_curve

    if folder is not None and (path := write_precision_recall_curve(table, folder / "precision_recall.png")):
        print(f"wrote {path}")
