"""MLflow glue: where runs go, how a config becomes params, and a picklable logger for training workers.

The default store is a SQLite database in the working directory (MLflow 3's own default; no server needed).
Params never carry secrets: values of environment variables whose names look like credentials are masked.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from celltune.trainables.secrets import MASK as MASK  # re-exported: the platform's callers import them here
from celltune.trainables.secrets import SECRET_NAME as SECRET_NAME
from celltune.trainables.secrets import mask_secrets as mask_secrets
from celltune.trainables.secrets import redact_uri as redact_uri
from celltune.trainables.secrets import secret_values as secret_values

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit for a param value
LOCKED_STORE_TRIES = 10  # back-off from ~0.2 s doubling to 30 s: minutes of a busy store before a write fails
_T = TypeVar("_T")
_retries = 0
_NOT_IN_METRIC_NAMES = re.compile(r"[^\w\-. :/]")


def metric_name(key: str) -> str:
    """A metric key MLflow accepts: dataset names like ``Fluo-N2DH-SIM+`` become ``Fluo-N2DH-SIMplus``."""
    return _NOT_IN_METRIC_NAMES.sub(lambda match: "plus" if match.group() == "+" else "_", key)


def retries_on_busy_store() -> int:
    """Writes this process tried again because the store was busy (the load benchmark reports them)."""
    return _retries


def _store_busy(error: BaseException, uri: str | None) -> bool:
    text = str(error).lower()
    if uri is not None and not uri.startswith("sqlite:"):
        # MLflow's HTTP client retries the server's 429/5xx itself; an exception inside its request (a dropped
        # connection, a race in its own telemetry headers under many threads) reaches us as this wrapper
        return text.startswith("api request to") and "failed with exception" in text
    return "database is locked" in text or "database table is locked" in text  # not other database errors


def when_store_free(call: Callable[[], _T], what: str = "MLflow write", uri: str | None = None) -> _T:
    """``call()``, tried again with a jittered back-off while a SQLite tracking store says it is busy (or a request
    to a tracking server failed inside the client).

    SQLite allows one writer at a time; MLflow waits up to 20 s for the lock, but a transaction that read before
    it wrote is refused at once ("database is locked") when another writer holds the lock. Such a write changed
    nothing, so trying it again is safe; many trials logging to the default store at once need it.
    """
    global _retries
    for attempt in range(LOCKED_STORE_TRIES):
        try:
            return call()
        except Exception as error:
            if attempt == LOCKED_STORE_TRIES - 1 or not _store_busy(error, uri):
                raise
            _retries += 1
            wait = min(30.0, 0.2 * 2 ** attempt) * random.uniform(0.5, 1.5)
            logger.warning("%s: the tracking store is busy (%s); trying again in %.1f s", what,
                           str(error).splitlines()[0][:200], wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def default_tracking_uri(cwd: Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<cwd>/mlflow.db`` (an absolute path, so Ray workers
    running in other directories write to the same database)."""
    configured = os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / 'mlflow.db'}"


def absolute_tracking_uri(uri: str) -> str:
    """``uri`` with a relative SQLite or file-store path made absolute (processes in other folders share it)."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path, _, query = uri.removeprefix("sqlite:///").partition("?")
        if path and path != ":memory:":
            return f"sqlite:///{Path(path).resolve()}" + (f"?{query}" if query else "")
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        return Path(uri.removeprefix("file:")).resolve().as_uri()
    return uri


def experiment_id(client, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created if new. With a SQLite store its artifacts go to ``mlruns/`` beside
    the database file, not to MLflow's default ``./mlruns`` of whatever folder the command ran in."""
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    location = None
    uri = absolute_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:////"):
        database = Path(uri.removeprefix("sqlite:///").partition("?")[0])
        location = (database.parent / "mlruns" / re.sub(r"[^\w.-]", "_", name)).as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten_params(tree: Mapping[str, Any], prefix: str = "",
                   secrets: set[str] | None = None) -> dict[str, str]:
    """Flatten a nested config into dotted MLflow params, masking any secret value that appears in one; keys
    are made names MLflow accepts as for metrics (a per-dataset setting for ``Fluo-N2DH-SIM+``)."""
    secrets = secret_values() if secrets is None else secrets
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}.", secrets))
            continue
        text = str(value)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        flat[metric_name(name)] = text[:MAX_PARAM_LENGTH]  # per-dataset keys: data.scale.Fluo-N2DH-SIMplus
    return flat


@dataclass(frozen=True)
class RunLogger:
    """Logs into one existing MLflow run from any process (a Ray worker included): it holds only strings.

    Built by the platform on the driver, pickled into the training workers, and called by rank 0.
    """

    tracking_uri: str
    run_id: str

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.log_metric_records([(step, metrics)])

    def log_metric_records(self, records: Sequence[tuple[int, Mapping[str, float]]]) -> None:
        """Many steps' metrics in as few requests as MLflow allows (1000 metrics per batch)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key=metric_name(k), value=float(v), timestamp=now, step=int(step))
                 for step, metrics in records for k, v in metrics.items()]
        client = self.client()
        for start in range(0, len(batch), 1000):
            self._log_batch(client, "log metrics", metrics=batch[start:start + 1000])

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        client = self.client()
        for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self._log_batch(client, "log params", params=items[start:start + 100])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(key, str(value)) for key, value in tags.items()]
        client = self.client()
        for start in range(0, len(items), 100):
            self._log_batch(client, "set tags", tags=items[start:start + 100])

    def _free(self, call: Callable[[], _T], what: str) -> _T:
        return when_store_free(call, what, self.tracking_uri)

    def _log_batch(self, client, what: str, **entities) -> None:
        self._free(lambda: client.log_batch(self.run_id, synchronous=True, **entities), what)

    def set_status(self, status: str) -> None:
        client = self.client()
        self._free(lambda: client.update_run(self.run_id, status=status), "update run status")

    def get_run(self):
        client = self.client()
        return self._free(lambda: client.get_run(self.run_id), "read run")

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        client = self.client()
        history = self._free(lambda: client.get_metric_history(self.run_id, key), "read metric history")
        return [(m.step, m.value) for m in history]

    # Artifacts are files, but the client reads the run's artifact location from the store first; writing a file
    # again is harmless, so these wait for a busy store too.
    def log_figure(self, figure, artifact_file: str) -> None:
        client = self.client()
        self._free(lambda: client.log_figure(self.run_id, figure, artifact_file), "log figure")

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        client, masked = self.client(), mask_secrets(dict(dictionary))
        self._free(lambda: client.log_dict(self.run_id, masked, artifact_file), "log dict")

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        client = self.client()
        self._free(lambda: client.log_artifact(self.run_id, str(local_path), artifact_path), "log artifact")

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        client = self.client()
        self._free(lambda: client.log_artifacts(self.run_id, str(local_dir), artifact_path), "log artifacts")


def environment_info() -> dict[str, str]:
    """Versions and device facts worth keeping with every run."""
    import platform as stdlib_platform
    from importlib.metadata import PackageNotFoundError, version

    info = {"python": stdlib_platform.python_version(), "machine": stdlib_platform.machine()}
    for package in ("celltune", "torch", "ray", "mlflow", "optuna", "zarr", "numpy"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = "absent"
    try:
        import torch

        info["cuda"] = str(torch.cuda.is_available())
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info
