"""The search as a person follows it: one table of trials on a terminal, one line per trial event in a pipe.

A Tune callback on the driver, in place of Tune's own status reporter (whose boxes and per-trial config dumps
fill a screen per trial): every trial's status, epoch, latest and best objective and its sampled values, under
one line with the trials done and an ETA. On a terminal the table is redrawn in place (ANSI cursor moves, at
most once a second); without one (CI, ``ray job submit``, a pipe) each start, evaluation and end prints one line.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray.tune import Callback

from celltune.trainables.console_bar import clock, is_interactive

REDRAW_EVERY_S = 1.0
SHOWN_PARAMETERS = 4


@dataclass
class TrialLine:
    trial_id: str
    params: str
    status: str = "running"
    epoch: int = 0
    evaluations: int = 0
    latest: float | None = None
    best: float | None = None
    started: float = field(default_factory=time.monotonic)


class TrialsView(Callback):
    """Draws the trials of one search; construct it on the driver and pass it in the Tuner's callbacks."""

    def __init__(self, *, name: str, metric: str, mode: str, trials: int, full_evaluations: int | None = None,
                 stream: TextIO | None = None, interactive: bool | None = None) -> None:
        """``full_evaluations``: reports of a trial that runs to its end; one that ends with fewer was stopped
        early (ASHA)."""
        self.full_evaluations = full_evaluations
        self.name = name
        self.metric = metric
        self.mode = mode
        self.trials = trials
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = is_interactive(self.stream) if interactive is None else interactive
        self.rows: dict[str, TrialLine] = {}
        self._started = time.monotonic()
        self._drawn = 0
        self._drawn_at = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune saves its callbacks with the experiment state
        state = dict(self.__dict__)
        state["stream"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.stream = sys.stderr
        self._drawn = 0
        self._started = time.monotonic()  # a resumed search: another process's clock; elapsed counts from here

    # Tune's hooks
    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        row = self.rows.get(trial.trial_id)
        if row is None:
            row = self.rows[trial.trial_id] = TrialLine(trial.trial_id, _params(trial.config))
        row.status = "running"
        if self.interactive:  # a pipe names the parameters once, at the trial's end
            self._draw()

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        row = self.rows.setdefault(trial.trial_id, TrialLine(trial.trial_id, _params(trial.config)))
        value = result.get(self.metric)
        row.epoch = int(result.get("epoch", row.epoch) or row.epoch)
        row.evaluations = int(result.get("training_iteration", row.evaluations + 1) or row.evaluations + 1)
        if isinstance(value, int | float) and math.isfinite(value):
            row.latest = float(value)
            if row.best is None or (value > row.best if self.mode == "max" else value < row.best):
                row.best = float(value)
        self._event(f"trial {trial.trial_id} epoch {row.epoch}: {self.metric} {_num(row.latest)} "
                    f"(best {_num(row.best)})")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        row = self.rows.get(trial.trial_id)
        stopped = (self.full_evaluations is not None and row is not None
                   and row.evaluations < self.full_evaluations)
        self._ended(trial, "stopped" if stopped else "done")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, "failed")

    def on_experiment_end(self, trials: list, **info) -> None:
        if self.interactive:
            self._draw()

    # drawing
    def _ended(self, trial, status: str) -> None:
        row = self.rows.setdefault(trial.trial_id, TrialLine(trial.trial_id, _params(trial.config)))
        row.status = status
        self._event(f"trial {trial.trial_id} {status} after {row.epoch} epochs: best {self.metric} "
                    f"{_num(row.best)}; {row.params} ({self.progress()})", force=True)

    def _event(self, line: str, force: bool = False) -> None:
        if not self.interactive:
            print(line, file=self.stream, flush=True)
        elif force or time.monotonic() - self._drawn_at >= REDRAW_EVERY_S:
            self._draw()

    def progress(self) -> str:
        ended = sum(row.status in ("done", "stopped", "failed") for row in self.rows.values())
        elapsed = time.monotonic() - self._started
        text = f"{ended}/{self.trials} trials done, {clock(elapsed)}"
        if 0 < ended < self.trials:
            text += f", ETA {clock(elapsed / ended * (self.trials - ended))}"
        return text

    def table(self) -> list[str]:
        best = [row.best for row in self.rows.values() if row.best is not None]
        overall = (max(best) if self.mode == "max" else min(best)) if best else None
        lines = [f"search {self.name}: {self.progress()}; best {self.metric} {_num(overall)}",
                 f"{'trial':<10} {'status':<8} {'epoch':>5} {'latest':>7} {'best':>7}  parameters"]
        for row in self.rows.values():
            lines.append(f"{row.trial_id[:10]:<10} {row.status:<8} {row.epoch:>5} {_num(row.latest):>7} "
                         f"{_num(row.best):>7}  {row.params}")
        return lines

    def _draw(self) -> None:
        lines = self.table()
        up = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.stream.write(up + "\n".join(lines) + "\n")
        self.stream.flush()
        self._drawn = len(lines)
        self._drawn_at = time.monotonic()


def _params(config: dict[str, Any]) -> str:
    """``lr=0.002 crop=128 model.name=unet (+3)``: keys by their last part, two parts where that repeats."""
    keys = [key for key, value in config.items() if not isinstance(value, dict)]
    last = [key.rsplit(".", 1)[-1] for key in keys]
    short = [part if last.count(part) == 1 else ".".join(key.split(".")[-2:])
             for key, part in zip(keys, last, strict=True)]
    shown = [f"{name}={_value(config[key])}" for key, name in zip(keys, short, strict=True)][:SHOWN_PARAMETERS]
    more = len(config) - len(shown)
    return " ".join(shown) + (f" (+{more})" if more > 0 else "")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
