"""Library output in the run's log file, celltune's own on the console.

Ray, MLflow, Optuna and Python warnings speak in their own formats and at their own levels (Ray's token
authentication notice, MLflow's signature hints, Optuna's experimental warnings); a person running `celltune train`
needs the bar, the scores and the errors. While a command runs, those libraries' log records and all Python
warnings go to one file in the run's folder; ``-v`` leaves them on the console.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

LIBRARY_LOGGERS = ("ray", "mlflow", "optuna", "alembic", "py.warnings", "urllib3", "filelock", "torch")
LOG_FILE = "celltune.log"
LIBRARIES = ("ray", "ray.tune", "mlflow", "optuna")  # what a search imports: their handlers exist before the swap
_ACTIVE: list[DeferredFileHandler] = []


class DeferredFileHandler(logging.Handler):
    """Appends to ``path`` once its folder exists (a run folder is made partway through a command) and holds
    the records until then; a command that fails before the folder exists writes nothing."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.DEBUG)
        self.path = Path(path)
        self._pending: list[str] = []
        self._stream: TextIO | None = None
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._pending.append(self.format(record))
            self._flush_pending()
        except Exception:  # noqa: BLE001 - logging must never end the command
            self.handleError(record)

    def flush(self) -> None:
        self._flush_pending()

    def _flush_pending(self) -> None:
        if self._stream is None:
            if not self.path.parent.is_dir():
                return
            self._stream = self.path.open("a", encoding="utf-8")
        self._stream.writelines(line + "\n" for line in self._pending)
        self._stream.flush()
        self._pending.clear()

    def close(self) -> None:
        try:
            self._flush_pending()
        finally:
            if self._stream is not None:
                self._stream.close()
                self._stream = None
            super().close()


@contextmanager
def library_output_to(path: Path, *, verbose: bool = False, preload: Sequence[str] = ()) -> Iterator[Path | None]:
    """Within the block, library loggers and Python warnings write to ``path``; yields ``path`` (None with
    ``verbose``, which changes nothing).

    Args:
        preload: modules to import first: libraries that install their own console handlers on import (Ray,
            MLflow) must do so before their handlers are swapped here.
    """
    if verbose:
        yield None
        return
    for module in preload:
        importlib.import_module(module)
    handler = DeferredFileHandler(path)
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    manager = logging.root.manager
    names = set(LIBRARY_LOGGERS) | {name for name, item in manager.loggerDict.items()
                                    if isinstance(item, logging.Logger) and item.handlers
                                    and name.split(".")[0] in LIBRARY_LOGGERS}
    for name in sorted(names):
        library_logger = logging.getLogger(name)
        saved.append((library_logger, library_logger.handlers[:], library_logger.propagate))
        library_logger.handlers = [handler]
        library_logger.propagate = False
    logging.captureWarnings(True)
    _ACTIVE.append(handler)
    try:
        yield Path(path)
    finally:
        _ACTIVE.remove(handler)
        logging.captureWarnings(False)
        for library_logger, handlers, propagate in saved:
            library_logger.handlers = handlers
            library_logger.propagate = propagate
        handler.close()


def run_folder_made() -> None:
    """Write what the libraries said so far into the log file now that its folder exists (a run killed before
    their next line still leaves it)."""
    for handler in _ACTIVE:
        handler.flush()
