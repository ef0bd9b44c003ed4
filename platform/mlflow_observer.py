"""Rank 0's view of a training run, written to MLflow: params, curves, overlays, environment.

A :class:`MlflowObserver` is built on the driver, pickled into the Ray Train workers and used by rank 0 only,
so it holds plain data (URI, run id) and keeps the metric history it needs for the learning-curve picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from celltune.platform.plots import learning_curve_figure, overlay_figure
from celltune.platform.tracking import RunLogger, environment_info, flatten_params, metric_name

CURVE_KEYS = ("loss/total", "epoch_loss/total", "seg_mean")


@dataclass
class MlflowObserver:
    """``log_config=False`` when someone else (the search driver) logs the run's params and config."""

    run_logger: RunLogger
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    log_config: bool = True

    def on_start(self, config, model_config: Mapping[str, Any]) -> None:
        resolved = config.model_dump(mode="json")
        run = self.run_logger.get_run()
        # A resumed run keeps its params; pick up its curves so the picture stays whole.
        for key in run.data.metrics:
            if key in CURVE_KEYS or key.startswith("seg/"):
                self.history[key] = self.run_logger.metric_history(key)
        if self.log_config and not run.data.params:
            self.run_logger.log_params(flatten_params(resolved))
            self.run_logger.log_dict(resolved, "config/train_config.yaml")
        if "env.python" not in run.data.tags:  # first start of this run
            self.run_logger.log_dict(dict(model_config), "config/model.json")
            self.run_logger.set_tags({f"env.{k}": v for k, v in environment_info().items()})

    def on_steps(self, records: list[tuple[int, dict[str, float]]]) -> None:
        for step, metrics in records:
            self._remember(step, metrics)
        self.run_logger.log_metric_records(records)

    def on_evaluation(self, step: int, epoch: int, metrics: Mapping[str, float],
                      examples: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        import matplotlib.pyplot as plt

        self._remember(step, metrics)
        self.run_logger.log_metrics(metrics, step=step)
        curves = {k: v for k, v in self.history.items() if k in CURVE_KEYS or k.startswith("seg/")}
        figure = learning_curve_figure(curves, title=f"learning curve (epoch {epoch})")
        self.run_logger.log_figure(figure, "plots/learning_curve.png")
        plt.close(figure)
        for dataset, (raw, reference, predicted) in examples.items():
            score = metrics.get(f"seg/{dataset}", float("nan"))
            figure = overlay_figure(raw, reference, predicted, title=f"{dataset}, epoch {epoch}, SEG {score:.3f}")
            self.run_logger.log_figure(figure, f"overlays/{dataset}/epoch_{epoch:05d}.png")
            plt.close(figure)

    def on_end(self, best: Mapping[str, float]) -> None:
        self.run_logger.log_metrics({f"best/{k}": v for k, v in best.items()}, step=int(best.get("best_step", 0)))

    def _remember(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.history.setdefault(metric_name(key), []).append((step, float(value)))
