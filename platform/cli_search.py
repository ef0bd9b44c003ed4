"""`celltune search`: Ray Tune + Optuna over a search space, threshold tuning, and registration of the best model."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_STORAGE = "celltune-searches"


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("search", help="search hyperparameters (Ray Tune + Optuna + ASHA), register the best")
    parser.add_argument("--space", required=True,
                        help="search-space YAML, or a shipped space: demo, xbnet_training, unet_modules, architectures")
    parser.add_argument("--trials", type=int, default=None, help="number of trials (default: the space's)")
    parser.add_argument("--stores", type=Path, default=None,
                        help="folder of prepared stores, filling the space's <stores> placeholder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a base-config value, e.g. --set training.epochs=20 (repeatable)")
    parser.add_argument("--init", default=None, metavar="URI",
                        help="every trial fine-tunes this model (models:/NAME@ALIAS, models:/NAME/VERSION or a "
                             "checkpoint folder); the same as --set init.model=URI")
    parser.add_argument("--name", default=None, help="search name (default: search-<space>-<timestamp>)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted search given by --name")
    parser.add_argument("--storage", default=DEFAULT_STORAGE,
                        help=f"Ray Tune storage: a folder or a URI like s3://bucket/path (default ./{DEFAULT_STORAGE})")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local Ray on 127.0.0.1)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    parser.add_argument("--experiment", default="celltune-search", help="MLflow experiment name")
    parser.add_argument("--register-as", default=None, help="registered model name (default: celltune-<space>)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler and the threshold study")
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: as many as the cluster's resources hold)")
    parser.add_argument("--keep-checkpoints", type=int, default=None, metavar="N",
                        help="checkpoints kept per trial (default 1: the latest holds the best weights and the "
                             "resume state); trials ASHA stopped early lose theirs unless they are the best")
    parser.add_argument("--max-failures", type=int, default=None, metavar="N",
                        help="restarts of a trial from its last checkpoint after its worker or node is lost "
                             "(default 2; -1: as many as it takes, for preemptible or flaky nodes)")
    parser.add_argument("--threshold-trials", type=int, default=None, metavar="N",
                        help="trials per dataset of the post-processing study after the search (default: the "
                             "space's postprocess.trials); a small N makes a quick check")
    parser.add_argument("--dry-run", action="store_true", help="print the checked space and the plan, then exit")
    parser.set_defaults(handler=_search)


def _search(args: argparse.Namespace) -> int:
    from celltune.data_prep.common import UserInputError
    from celltune.platform.config_io import parse_overrides
    from celltune.platform.console import LIBRARIES, library_output_to
    from celltune.platform.search_run import (
        default_search_name,
        resolve_stores,
        run_search,
        search_log_file,
        search_plan,
        search_summary,
    )
    from celltune.platform.train_run import check_run_name
    from celltune.search_spaces.space import load_space
    from celltune.search_spaces.tuner import SearchSettings

    if args.trials is not None and args.trials < 1:
        raise UserInputError(f"--trials {args.trials}: needs at least one trial")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UserInputError(f"--max-concurrent {args.max_concurrent}: must be at least 1 (leave it out for as many "
                             "trials as the cluster's resources hold)")
    if args.max_failures is not None and args.max_failures < -1:
        raise UserInputError(f"--max-failures {args.max_failures}: must be -1 (restart a trial as often as it "
                             "takes) or at least 0")
    if args.threshold_trials is not None and args.threshold_trials < 1:
        raise UserInputError(f"--threshold-trials {args.threshold_trials}: must be at least 1")
    if args.keep_checkpoints is not None and args.keep_checkpoints < 1:
        raise UserInputError(f"--keep-checkpoints {args.keep_checkpoints}: must be at least 1 (the latest "
                             "checkpoint is what a trial resumes from and what the best trial registers)")
    if "://" not in args.storage and Path(args.storage).exists() and not Path(args.storage).is_dir():
        raise UserInputError(f"--storage {args.storage}: is a file, not a folder")
    if args.resume:  # Tune restores the search as it started: its trial count, sampler and base config
        given = [flag for flag, value in (("--set", args.overrides), ("--init", args.init),
                                          ("--trials", args.trials is not None),
                                          ("--seed", args.seed != 0),
                                          ("--keep-checkpoints", args.keep_checkpoints is not None),
                                          ("--max-failures", args.max_failures is not None)) if value]
        if given:
            raise UserInputError(f"--resume continues the search with the settings it started with; leave out "
                                 f"{', '.join(given)}")
    max_failures = SearchSettings.max_failures if args.max_failures is None else args.max_failures
    overrides = parse_overrides(args.overrides)
    if args.init:
        overrides["init.model"] = args.init
    space = load_space(args.space, overrides=overrides or None, stores_dir=args.stores)
    if args.threshold_trials is not None:
        space = space.with_threshold_trials(args.threshold_trials)
    if args.dry_run:
        space = resolve_stores(space)
        settings = SearchSettings(storage_path=args.storage, name=args.name or "<name>", seed=args.seed,
                                  trials=args.trials or space.trials, max_concurrent=args.max_concurrent,
                                  checkpoints_to_keep=args.keep_checkpoints or 1,
                                  max_failures=max_failures)
        available = {"CPU": float(os.cpu_count() or 1)}
        print(json.dumps(search_plan(space, settings, available), indent=2, default=str))
        return 0
    name = args.name or default_search_name(space)
    check_run_name(name)  # before it names the log file's folder
    with library_output_to(search_log_file(args.storage, name), verbose=args.verbose, preload=LIBRARIES) as log:
        if log:
            print(f"search {name}: library output in {log}", flush=True)
        result = run_search(space, storage=args.storage, name=name, resume=args.resume, trials=args.trials,
                            seed=args.seed, tracking_uri=args.tracking_uri, experiment=args.experiment,
                            address=args.address, register_as=args.register_as, max_concurrent=args.max_concurrent,
                            checkpoints_to_keep=args.keep_checkpoints or 1,
                            max_failures=max_failures)
    print(search_summary(result))
    if log:
        print(f"library output: {log}")
    return 0
