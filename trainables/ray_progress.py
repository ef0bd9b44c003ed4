"""Rank 0's bar and warnings shown by the driver, not by Ray's log forwarding.

Workers' own output (Ray's per-process prefixes, its controller's state messages, tqdm_ray redraws) stays in
Ray's session logs; what a person needs from a run travels through one small Ray queue instead: rank 0's
bar state (throttled) and celltune's warnings. One driver thread draws them with a :class:`ConsoleBar`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celltune.trainables.console_bar import ConsoleBar

logger = logging.getLogger(__name__)

SEND_EVERY_S = 0.5  # the bar's state at most twice a second; descriptions (evaluations) always
QUEUE_SIZE = 1000
BAR, LOG = "bar", "log"


class RemoteBar:
    """The tqdm-like bar rank 0 draws with: each change goes to the driver's queue instead of a terminal."""

    def __init__(self, queue: Any, total: int, initial: int = 0, desc: str = "") -> None:
        self._queue = queue
        self.n = initial
        self.total = total
        self.desc = desc
        self._sent_at = 0.0
        self._send(force=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._send()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        self._send(force=True)

    def refresh(self) -> None:
        self._send()

    def close(self) -> None:
        self._send(force=True)

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._sent_at < SEND_EVERY_S:
            return
        self._sent_at = now
        _put(self._queue, (BAR, self.n, self.total, self.desc))


class QueueLogHandler(logging.Handler):
    """celltune's warnings from a worker, re-logged on the driver under the same logger name."""

    def __init__(self, queue: Any) -> None:
        super().__init__(level=logging.WARNING)
        self._queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        _put(self._queue, (LOG, record.name, record.levelno, record.getMessage()))


def _put(queue: Any, item: tuple) -> None:
    from ray.util.queue import Full

    try:
        queue.put_nowait(item)
    except Full:  # the driver is behind; a later state carries the same information
        pass


class DriverProgress:
    """Owns the queue and the thread that draws what arrives; a context manager around ``trainer.fit()``."""

    def __init__(self, bar_factory=ConsoleBar) -> None:
        from ray.util.queue import Queue

        self.queue = Queue(maxsize=QUEUE_SIZE, actor_options={"num_cpus": 0})  # never takes a trainer's CPU
        self._bar_factory = bar_factory
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="celltune-progress", daemon=True)

    def __enter__(self) -> DriverProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._drain()
        if self._bar is not None:
            self._bar.close()
        try:
            self.queue.shutdown()
        except Exception:  # noqa: BLE001 - Ray may already be gone after a failed run; nothing left to free
            logger.debug("progress queue already gone", exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._drain():
                self._stop.wait(0.2)

    def _drain(self) -> bool:
        try:
            count = self.queue.qsize()
            items = self.queue.get_nowait_batch(count) if count else []
        except Exception:  # noqa: BLE001 - the queue actor died with the cluster: the run's own error says why
            return False
        for item in items:
            self._show(item)
        return bool(items)

    def _show(self, item: tuple) -> None:
        if item[0] == LOG:
            _, name, level, message = item
            logging.getLogger(name).log(level, "%s", message)
            return
        _, n, total, desc = item
        if self._bar is None:
            self._bar = self._bar_factory(total=total, initial=n, desc=desc)
            return
        if total != self._bar.total:
            self._bar.total = total
        if n > self._bar.n:
            self._bar.update(n - self._bar.n)
        if desc != self._bar.desc:
            self._bar.set_description(desc)
        else:
            self._bar.refresh()
