"""`celltune ui`: the MLflow UI for the store celltune writes to, on 127.0.0.1 unless told otherwise.

One short command for the step every other command prints as "look at it": the same default store
(``$MLFLOW_TRACKING_URI`` or ``sqlite:///./mlflow.db``), artifacts served from where the runs put them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys


def add_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("ui", help="open the MLflow UI for celltune's runs and models (127.0.0.1:5000)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; reach it from elsewhere "
                             "through an SSH tunnel)")
    parser.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    parser.set_defaults(handler=_ui)


def ui_command(tracking_uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command line for this store."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host,
            "--port", str(port)]


def _ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    from celltune.data_prep.common import UserInputError
    from celltune.platform.tracking import absolute_tracking_uri, default_tracking_uri, redact_uri

    if not 0 < args.port < 65536:
        raise UserInputError(f"--port {args.port}: must lie in 1-65535")
    uri = absolute_tracking_uri(args.tracking_uri or default_tracking_uri())
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///").partition("?")[0]).is_file():
        raise UserInputError(f"{uri}: no tracking database here yet (run a command first, or pass --tracking-uri)")
    print(f"MLflow UI for {redact_uri(uri)} at http://{args.host}:{args.port} (Ctrl-C to stop)", flush=True)
    try:
        return subprocess.call(ui_command(uri, args.host, args.port))
    except KeyboardInterrupt:
        return 0
