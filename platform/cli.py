"""The `celltune` command: one entry point, a subcommand per job, one-line errors.

Exit codes: 0 ok, 2 usage or bad input (UserInputError, invalid config), 1 any other failure.
Tracebacks appear only with ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from celltune.data_prep.common import UserInputError, one_line
from celltune.platform import (
    cli_data,
    cli_evaluate,
    cli_leave_out,
    cli_models,
    cli_predict,
    cli_search,
    cli_train,
    cli_ui,
    demo,
)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("celltune")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="celltune",
        description="Hyperparameter search and universal training for cell instance segmentation (CTC data).",
    )
    parser.add_argument("--version", action="version", version=f"celltune {version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at INFO level, with the libraries' output and Ray workers' on the console "
                             "(otherwise in the run's celltune.log)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.add_parser(commands)
    cli_data.add_parser(commands)
    cli_train.add_parser(commands)
    cli_search.add_parser(commands)
    cli_predict.add_parser(commands)
    cli_evaluate.add_parser(commands)
    cli_models.add_parser(commands)
    cli_leave_out.add_parser(commands)
    cli_ui.add_parser(commands)
    return parser




def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.verbose:  # Ray forwards every worker's output too
        from celltune.data_prep.ray_session import WORKER_LOGS_ENV

        os.environ[WORKER_LOGS_ENV] = "1"
    else:  # MLflow sets its own loggers to INFO ("Creating initial MLflow database tables...")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        # and draws a bar for every model download, a few kB here, that would sit above celltune's own output
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        result = args.handler(args)
    except UserInputError as exc:
        if args.debug:
            raise
        print(f"celltune: error: {one_line(exc, 10_000)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        detail = one_line(exc) if str(exc) else ""
        print(f"celltune: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"celltune: failed: {type(exc).__name__}: {one_line(exc)} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return EXIT_FAILURE
    return int(result or EXIT_OK)


if __name__ == "__main__":
    sys.exit(main())
