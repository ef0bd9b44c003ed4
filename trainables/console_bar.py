"""The training bar a person reads: redrawn in place on a terminal, one plain line per evaluation in a pipe.

A log file, CI or ``ray job submit`` gets no carriage-return redraws: each time the description changes (the
training loop sets it after every evaluation) the bar prints one line with the step count, the elapsed time and
the ETA, so a 20-minute run writes a few dozen readable lines instead of thousands of redraws.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def is_interactive(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams (pytest's capture)
        return False


class ConsoleBar:
    """tqdm's ``update``/``set_description``/``refresh``/``close`` and a settable ``total``, for either console."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", *, stream: TextIO | None = None,
                 interactive: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = is_interactive(self.stream) if interactive is None else interactive
        self.n = initial
        self._total = total
        self.desc = desc
        self._start_n = initial
        self._started = time.monotonic()
        self._tqdm = None
        if self.interactive:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                              file=self.stream)

    @property
    def total(self) -> int:
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        self._total = value
        if self._tqdm is not None:
            self._tqdm.total = value

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._tqdm is not None:
            self._tqdm.update(n)

    def set_description(self, desc: str) -> None:
        changed = desc != self.desc
        self.desc = desc
        if self._tqdm is not None:
            self._tqdm.set_description(desc)
        elif changed:
            self._print_line()

    def refresh(self) -> None:
        if self._tqdm is not None:
            self._tqdm.refresh()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def _print_line(self) -> None:
        elapsed = time.monotonic() - self._started
        done = self.n - self._start_n
        eta = ""
        if done > 0 and self._total > self.n:
            eta = f", ETA {clock(elapsed / done * (self._total - self.n))}"
        print(f"{self.desc} | step {self.n}/{self._total} | {clock(elapsed)}{eta}", file=self.stream, flush=True)


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"
