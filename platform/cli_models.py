"""`celltune models`: list, show, compare, promote and export registered models (MLflow aliases, no stages), and
report how they transfer to other datasets (``transfer``: SEG per model and dataset).

Parsing and printing only: promotion lives in :mod:`celltune.platform.model_promotion`, export in
:mod:`celltune.platform.model_export`, the views in :mod:`celltune.platform.model_registry_views`.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from celltune.data_prep.common import UserInputError
from celltune.platform.model_promotion import DEFAULT_ALIAS

logger = logging.getLogger(__name__)

_REF_HELP = "NAME (all versions), NAME@ALIAS or NAME/VERSION"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("models", help="list, show, compare and promote registered models")
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    def with_uri(action: argparse.ArgumentParser) -> argparse.ArgumentParser:
        action.add_argument("--tracking-uri", default=None,
                            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
        return action

    with_uri(sub.add_parser("list", help="registered models: versions, aliases, latest seg_mean")).set_defaults(
        handler=_list)
    show = with_uri(sub.add_parser("show", help="a version's metrics, thresholds, settings and promotions"))
    show.add_argument("ref", metavar="REF", help=_REF_HELP)
    show.set_defaults(handler=_show)
    compare = with_uri(sub.add_parser("compare", help="all versions of a model side by side"))
    compare.add_argument("name", metavar="NAME")
    compare.set_defaults(handler=_compare)
    promote_parser = with_uri(sub.add_parser("promote", help="move an alias (default champion) to a version"))
    promote_parser.add_argument("name", metavar="NAME")
    promote_parser.add_argument("version", metavar="VERSION")
    promote_parser.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias to move (default {DEFAULT_ALIAS})")
    promote_parser.add_argument("--force", action="store_true",
                                help="promote even when the version's seg_mean is below the current holder's")
    promote_parser.add_argument("--reason", default="", help="why, recorded with the promotion")
    promote_parser.set_defaults(handler=_promote)
    transfer = with_uri(sub.add_parser(
        "transfer", help="SEG of one or several models on CTC datasets (zero-shot transfer table and heat-map)"))
    transfer.add_argument("models", nargs="+", metavar="MODEL",
                          help="NAME@ALIAS, NAME/VERSION (models:/ optional) or a checkpoint folder")
    transfer.add_argument("--data", type=Path, action="append", required=True, metavar="DS",
                          help="a CTC dataset folder with NN_GT/SEG (repeatable)")
    transfer.add_argument("--out", type=Path, default=None, metavar="FILE",
                          help="also write the table here (.csv or .json)")
    transfer.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw the heat-map here")
    transfer.add_argument("--no-log", action="store_true",
                          help="do not log the table to the registered versions' MLflow runs")
    transfer.add_argument("--device", default="auto",
                          help="where the networks run: auto (default: CUDA where present, else CPU), cpu, cuda[:N]")
    transfer.add_argument("--batch-size", type=int, default=4, metavar="N", help="frames per forward pass")
    transfer.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a threshold for every model, e.g. --set min_area=40 (repeatable)")
    transfer.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                          help="test-time augmentation: average over the 8 flips and quarter turns (8x the time); "
                               "default: as each model's card says")
    transfer.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    transfer.set_defaults(handler=_transfer)
    from celltune.platform.model_export import FORMATS

    export = with_uri(sub.add_parser("export", help="write a model as ONNX or as a bioimage.io model package"))
    export.add_argument("model", metavar="MODEL",
                        help="NAME@ALIAS, NAME/VERSION (models:/ optional) or a checkpoint folder")
    export.add_argument("--format", required=True, dest="export_format", metavar="FORMAT", help=" or ".join(FORMATS))
    export.add_argument("--out", type=Path, required=True, metavar="DIR", help="a new folder for the exported files")
    export.set_defaults(handler=_export)


def _tracking_uri(args: argparse.Namespace) -> str:
    from celltune.platform.tracking import default_tracking_uri

    return args.tracking_uri or default_tracking_uri()


def _client(args: argparse.Namespace):
    from celltune.platform.model_registry_views import registry_client

    return registry_client(_tracking_uri(args))


def _list(args: argparse.Namespace) -> int:
    from celltune.platform.model_registry_views import format_model_list, list_models

    models = list_models(_client(args))
    print(format_model_list(models) if models else f"no registered models in {_tracking_uri(args)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from celltune.platform.model_registry import resolve_ref
    from celltune.platform.model_registry_views import (
        eval_metrics,
        format_version,
        model_versions,
        require_model,
        version_view,
    )

    client = _client(args)
    ref = args.ref.removeprefix("models:/")  # the URI form predict takes works too
    if "@" in ref or "/" in ref:
        name = re.split(r"[@/]", ref, maxsplit=1)[0]
        require_model(client, name)  # the same unknown-model message as the other commands
        resolved = resolve_ref(f"models:/{ref}", tracking_uri=_tracking_uri(args))
        views = [version_view(client, name, resolved.version)]
    else:
        views = model_versions(client, ref)
        if not views:
            print(f"{ref}: no versions registered")
            return 0
    print("\n\n".join(format_version(view, eval_metrics(client, view.run_id)) for view in views))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from celltune.platform.model_registry_views import format_compare, model_versions

    views = model_versions(_client(args), args.name)
    print(format_compare(views) if views else f"{args.name}: no versions registered")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from celltune.platform.model_promotion import promote

    result = promote(args.name, args.version, alias=args.alias, force=args.force, reason=args.reason,
                     tracking_uri=_tracking_uri(args))
    print(result.message)
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from celltune.platform.command_options import split_overrides
    from celltune.platform.model_registry import load_model
    from celltune.platform.predict import PredictOptions
    from celltune.platform.transfer import (
        check_output,
        dataset_sources,
        log_transfer,
        transfer_report,
        write_heatmap,
    )
    from celltune.trainables.inference import resolve_device

    if args.batch_size < 1:
        raise UserInputError(f"--batch-size {args.batch_size}: must be >= 1")
    check_output(args.out)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UserInputError(f"--plot {args.plot}: name a .png file")
    overrides, tracking = split_overrides(args.overrides)
    if tracking:
        raise UserInputError("--set track.*: transfer scores SEG only and does not track")
    datasets = dataset_sources(args.data)  # bad data fails before any model loads
    tracking_uri = _tracking_uri(args)
    labels = [_model_label(model) for model in args.models]
    if len(set(labels)) != len(labels):
        raise UserInputError(f"{' '.join(args.models)}: a model is given twice")
    loaded = {label: load_model(_model_uri(model), tracking_uri) for label, model in zip(labels, args.models,
                                                                                           strict=True)}

    def report(label: str, dataset: str, score) -> None:
        seg = "-" if score.seg is None else f"{score.seg:.3f}"
        print(f"{label} on {dataset}: SEG {seg} over {score.frames} GT frames"
              + (" (trained on it)" if score.seen else ""), flush=True)

    table = transfer_report(loaded, datasets, overrides=overrides, options=PredictOptions(
        device=str(resolve_device(args.device)), batch_size=args.batch_size, track=False, tta=args.tta),
        show_progress=not args.no_progress,
        on_score=report)
    print(table.format())
    if args.out is not None:
        print(f"wrote {table.write(args.out)}")
    if args.plot is not None:
        print(f"wrote {write_heatmap(table, args.plot)}")
    if not args.no_log:
        for label, model in loaded.items():
            if model.ref.run_id is not None:
                log_transfer(table, label, run_id=model.ref.run_id, tracking_uri=tracking_uri)
                print(f"logged to MLflow run {model.ref.run_id} ({model.ref.name} version {model.ref.version})")
    return 0


def _export(args: argparse.Namespace) -> int:
    from celltune.platform.model_export import export_model

    print(export_model(_model_uri(args.model), args.export_format, args.out,
                       tracking_uri=_tracking_uri(args)).summary())
    return 0


def _model_uri(model: str) -> str:
    """A checkpoint folder as given; anything else is a registered model, ``models:/`` optional."""
    return model if model.startswith("models:/") or Path(model).exists() else f"models:/{model}"


def _model_label(model: str) -> str:
    return Path(model).name if Path(model).exists() else model.removeprefix("models:/")
