"""`celltune train`: universal training of one network on several datasets, on Ray Train, tracked in MLflow."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from celltune.platform.command_options import DEFAULT_RUN_STORAGE as DEFAULT_STORAGE


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train a network on prepared datasets (Ray Train + MLflow)")
    parser.add_argument("--config", type=Path, required=True, help="training config YAML")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.epochs=10 (repeatable)")
    parser.add_argument("--init", default=None, metavar="URI",
                        help="fine-tune: start from this model's weights (models:/NAME@ALIAS, models:/NAME/VERSION "
                             "or a checkpoint folder; same architecture); see init.freeze_encoder, init.encoder_lr")
    parser.add_argument("--name", default=None, help="run name (default: train-<timestamp>)")
    parser.add_argument("--resume", action="store_true", help="continue the stopped run given by --name")
    parser.add_argument("--storage", type=Path, default=DEFAULT_STORAGE,
                        help=f"Ray storage folder for checkpoints (default ./{DEFAULT_STORAGE})")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local Ray on 127.0.0.1)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    parser.add_argument("--experiment", default="celltune-train", help="MLflow experiment name")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and Ray plan, then exit")
    local = parser.add_argument_group("one process, no Ray (a workstation GPU, debugging)")
    local.add_argument("--local", action="store_true",
                       help="train in this process on one device instead of on Ray (resources are ignored)")
    local.add_argument("--device", default=None,
                       help="with --local: auto (default: CUDA where present, else CPU), cpu, cuda or cuda:N")
    local.add_argument("--no-tracking", action="store_true",
                       help="with --local: no MLflow run (checkpoints in the storage folder only)")
    parser.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from celltune.data_prep.common import UserInputError
    from celltune.platform.config_io import load_config
    from celltune.platform.console import LOG_FILE, library_output_to
    from celltune.platform.tracking import redact_uri
    from celltune.platform.train_run import (
        check_config,
        check_run_name,
        default_run_name,
        dry_run_plan,
        run_training,
        run_untracked,
    )
    from celltune.trainables.config import TrainConfig
    from celltune.trainables.local_train import local_device

    if not args.local and (args.device is not None or args.no_tracking):
        raise UserInputError(f"{'--device' if args.device is not None else '--no-tracking'} goes with --local "
                             "(a Ray run places workers by resources.gpus_per_worker and is always tracked)")
    if args.local and args.address:
        raise UserInputError("--local trains in this process; leave out --address")
    device = args.device or "auto"
    overrides = [*args.overrides, *([f"init.model={args.init}"] if args.init else [])]
    config = load_config(TrainConfig, args.config, overrides)
    if args.local:
        resolved = local_device(device)  # a device this machine lacks fails before anything is written
    if args.dry_run:
        check_config(config)
        plan = dry_run_plan(config)
        if args.local:
            plan["ray"] = None
            plan["local"] = {"device": str(resolved)}
        print(json.dumps(plan, indent=2))
        return 0
    if args.resume and not args.name:
        raise UserInputError("--resume needs --name of the run to continue")
    name = args.name or default_run_name()
    check_run_name(name)  # before it names the log file's folder
    log_file = (args.storage / name / LOG_FILE).resolve()
    preload = (*(() if args.no_tracking else ("mlflow",)), *(() if args.local else ("ray",)))
    with library_output_to(log_file, verbose=args.verbose, preload=preload) as captured:
        if captured:
            print(f"run {name}: library output in {captured}", flush=True)
        if args.no_tracking:
            result = run_untracked(config, storage_path=args.storage, name=name, resume=args.resume, device=device)
        else:
            result = run_training(config, storage_path=args.storage, name=name, resume=args.resume,
                                  tracking_uri=args.tracking_uri, experiment=args.experiment, address=args.address,
                                  local=args.local, device=device, show_progress=True)
    best = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith(("seg", "best/seg"))}
    print(f"run {result.name} finished: {json.dumps(best)}")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id} in {redact_uri(result.tracking_uri)}")
    print(f"checkpoint: {result.checkpoint_dir}")
    if captured:
        print(f"library output: {captured}" + (f"; Ray workers' logs: {workers}" if (workers := _ray_logs()) else ""))
    return 0


def _ray_logs() -> str | None:
    import sys

    if sys.modules.get("ray") is None:  # a --local run never started Ray
        return None
    from celltune.data_prep.ray_session import worker_log_folder

    return worker_log_folder()
