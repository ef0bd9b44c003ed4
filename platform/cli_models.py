"""`celltune models`: list, show, compare and promote registered models (MLflow aliases, no stages), and
report how they transfer to other datasets (``transfer``: SEG per model and dataset).

``promote`` is the one command that changes anything: it moves an alias (default ``champion``) and records who,
when, why and the previous holder as ``celltune.promoted.<alias>.*`` tags on the promoted version. It refuses to
move the alias to a version whose validation ``seg_mean`` is below the current holder's unless forced, so a
worse model never replaces a better one by accident.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from celltune.data_prep.errors import UserInputError

logger = logging.getLogger(__name__)

DEFAULT_ALIAS = "champion"
_VERSION = re.compile(r"^\d+$")
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
    transfer.add_argument("--tta", action="store_true",
                          help="test-time augmentation: average over the 8 flips and quarter turns (8x the time)")
    transfer.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    transfer.set_defaults(handler=_transfer)


def _tracking_uri(args: argparse.Namespace) -> str:
    from celltune.platform.tracking import default_tracking_uri

    return args.tracking_uri or default_tracking_uri()


def _client(args: argparse.Namespace):
    from celltune.platform.registry_views import registry_client

    return registry_client(_tracking_uri(args))


def _list(args: argparse.Namespace) -> int:
    from celltune.platform.registry_views import format_model_list, list_models

    models = list_models(_client(args))
    print(format_model_list(models) if models else f"no registered models in {_tracking_uri(args)}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from celltune.platform.model_registry import resolve_ref
    from celltune.platform.registry_views import (
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
    from celltune.platform.registry_views import format_compare, model_versions

    views = model_versions(_client(args), args.name)
    print(format_compare(views) if views else f"{args.name}: no versions registered")
    return 0


def _promote(args: argparse.Namespace) -> int:
    result = promote(args.name, args.version, alias=args.alias, force=args.force, reason=args.reason,
                     tracking_uri=_tracking_uri(args))
    print(result.message)
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from celltune.platform.cli_predict import split_overrides
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


def _model_uri(model: str) -> str:
    """A checkpoint folder as given; anything else is a registered model, ``models:/`` optional."""
    return model if model.startswith("models:/") or Path(model).exists() else f"models:/{model}"


def _model_label(model: str) -> str:
    return Path(model).name if Path(model).exists() else model.removeprefix("models:/")


@dataclass(frozen=True)
class Promotion:
    """What :func:`promote` did: ``moved`` is False when the alias already pointed at the version."""

    name: str
    alias: str
    version: str
    previous: str | None
    moved: bool
    message: str


def _score(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers): getpass raises KeyError/OSError depending on Python
        return os.environ.get("USER") or "unknown"


def promote(name: str, version: str, *, alias: str = DEFAULT_ALIAS, force: bool = False, reason: str = "",
            tracking_uri: str | None = None, user: str | None = None, now: datetime | None = None) -> Promotion:
    """Move ``alias`` of registered model ``name`` to ``version`` and record the promotion on that version.

    Args:
        name: registered model name.
        version: version number (digits).
        alias: the alias to move, created when the model has none by that name.
        force: promote even when the version's ``celltune.seg_mean`` is below the current holder's or missing.
        reason: free text stored as ``celltune.promoted.<alias>.reason``.
        tracking_uri: MLflow tracking (and registry) URI; default ``default_tracking_uri()``.
        user, now: who and when to record (default: the login name and the current UTC time).

    Raises:
        UserInputError: unknown model or version, a bad alias, a version without ``celltune.seg_mean``, or a
            version scoring below the current holder (each without ``force`` where forcing applies).
    """
    from mlflow.exceptions import MlflowException

    from celltune.platform.model_registry import resolve_ref
    from celltune.platform.registry_views import PROMOTED_PREFIX, registry_client, require_model, version_view
    from celltune.platform.tracking import default_tracking_uri

    tracking_uri = tracking_uri or default_tracking_uri()
    version = str(version).strip()
    if not _VERSION.match(version):
        raise UserInputError(f"version {version!r}: must be a version number such as 3")
    version = str(int(version))
    if not alias.strip():
        raise UserInputError("--alias: must not be empty")
    client = registry_client(tracking_uri)
    registered = require_model(client, name)
    resolve_ref(f"models:/{name}/{version}", tracking_uri=tracking_uri)  # unknown version -> one-line error
    target = version_view(client, name, version)
    holder_number = (registered.aliases or {}).get(alias)
    holder = None if holder_number is None else version_view(client, name, holder_number)
    if holder is not None and holder.version == target.version:
        return Promotion(name, alias, version, version, moved=False,
                         message=f"{alias} of {name} already points to version {version}; nothing changed")
    if target.seg_mean is None and not force:
        raise UserInputError(f"{name} version {version} has no celltune.seg_mean tag to compare; pass --force to "
                             f"promote it to {alias} anyway")
    below = holder is not None and None not in (holder.seg_mean, target.seg_mean) and \
        target.seg_mean < holder.seg_mean
    if below and not force:
        raise UserInputError(f"refusing to move {alias} from version {holder.version} (seg_mean "
                             f"{_score(holder.seg_mean)}) to version {version} (seg_mean {_score(target.seg_mean)}); "
                             "pass --force to promote anyway")
    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:  # e.g. reserved aliases such as "latest" or "v3"
        raise UserInputError(f"--alias {alias!r}: {' '.join(exc.message.split())}") from None
    at = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    previous = "" if holder is None else str(holder.version)
    record = {"by": user or _user(), "at": at, "reason": reason, "previous": previous}
    for key, value in record.items():
        client.set_model_version_tag(name, version, f"{PROMOTED_PREFIX}{alias}.{key}", value)
    logger.info("promoted %s version %s to %s (previous %s)", name, version, alias, previous or "none")
    if holder is None:
        message = f"{alias} of {name} now points to version {version} (seg_mean {_score(target.seg_mean)})"
    else:
        message = (f"moved {alias} of {name} from version {holder.version} (seg_mean {_score(holder.seg_mean)}) "
                   f"to version {version} (seg_mean {_score(target.seg_mean)})")
    if below or target.seg_mean is None:
        message += " (forced)"
    return Promotion(name, alias, version, previous or None, moved=True, message=message)
