"""Zero-shot transfer report (`celltune models transfer`): SEG of one or several models on CTC datasets.

The question a biologist with a new movie asks is "does the champion segment my cells as it is?". This scores
every model on every dataset with the SEG-only path (:mod:`celltune.platform.seg_only`: only the GT SEG frames
are predicted), marks the datasets each model was trained on (those scores are not transfer), writes the table
as CSV or JSON and, for registered models, logs it with a models x datasets heat-map to each version's run.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celltune.data_prep.common import UserInputError, write_atomic
from celltune.trainables.model_card import ModelCard

ARTIFACT_DIR = "transfer"
WRITERS = (".csv", ".json")


@dataclass(frozen=True)
class TransferScore:
    """One model on one dataset: mean SEG over its sequences, pooled instance F1 at IoU 0.5, and whether the
    model saw the dataset in training."""

    seg: float | None
    f1: float | None
    frames: int
    seen: bool


@dataclass(frozen=True)
class TransferTable:
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    scores: Mapping[tuple[str, str], TransferScore]

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per (model, dataset), the CSV and JSON form."""
        return [{"model": model, "dataset": dataset, "seg": score.seg, "f1@0.5": score.f1, "frames": score.frames,
                 "seen_in_training": score.seen}
                for model in self.models for dataset in self.datasets
                for score in (self.scores[(model, dataset)],)]

    def format(self) -> str:
        """SEG, models down and datasets across; ``*`` marks a dataset the model was trained on."""
        header = ["model", *self.datasets]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for model in self.models:
            cells = []
            for dataset in self.datasets:
                score = self.scores[(model, dataset)]
                cells.append(("-" if score.seg is None else f"{score.seg:.3f}") + (" *" if score.seen else ""))
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        if any(score.seen for score in self.scores.values()):
            lines.append("* trained on this dataset (not a transfer score)")
        return "\n".join(lines)

    def write(self, path: Path) -> Path:
        """Write the rows as CSV or JSON (by suffix), atomically."""
        path = Path(path)
        if path.suffix.lower() == ".csv":
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(self.rows()[0]))
            writer.writeheader()
            writer.writerows(self.rows())
            text = buffer.getvalue()
        else:
            text = json.dumps({"models": list(self.models), "datasets": list(self.datasets), "rows": self.rows()},
                              indent=2) + "\n"
        return write_atomic(path, text)


def check_output(path: Path | None) -> None:
    """Refuse an output path the report cannot write, before any model runs."""
    if path is None:
        return
    if path.suffix.lower() not in WRITERS:
        raise UserInputError(f"--out {path}: name a .csv or .json file")
    if path.is_dir():
        raise UserInputError(f"--out {path}: is a folder; name a .csv or .json file")
    if not path.parent.is_dir():
        raise UserInputError(f"--out {path}: folder {path.parent} does not exist")


def trained_datasets(card: ModelCard) -> set[str]:
    """Names of the datasets (store folder names without ``.zarr``) a model was trained on."""
    return {Path(store).name.removesuffix(".zarr") for store in card.training_stores}


def dataset_sources(datasets: Sequence[Path]) -> dict[str, tuple[Path, list]]:
    """Each CTC dataset folder by name, with its sequences that have GT SEG frames.

    Raises:
        UserInputError: two datasets with one folder name, or a folder missing or without GT SEG frames (see
            :func:`celltune.platform.seg_only.seg_only_sequences`).
    """
    from celltune.platform.seg_only import seg_only_sequences

    found: dict[str, tuple[Path, list]] = {}
    for data in datasets:
        name = Path(data).resolve().name
        if name in found:
            raise UserInputError(f"--data {data}: a dataset named {name!r} is already given; give each dataset once")
        found[name] = (Path(data), seg_only_sequences(Path(data)))
    return found


def transfer_report(models: Mapping[str, Any], datasets: Mapping[str, tuple[Path, list]], *,
                    overrides: Mapping[str, Any] | None = None, options=None, show_progress: bool = False,
                    on_score: Callable[[str, str, TransferScore], None] | None = None) -> TransferTable:
    """SEG of each ``LoadedModel`` in ``models`` (label -> model) on each dataset of :func:`dataset_sources`.

    Each model uses the thresholds tuned for a dataset when it has them (a dataset it was trained on), its
    default ones otherwise, with ``overrides`` on top.

    Raises:
        UserInputError: a model that cannot predict a dataset (see
            :func:`celltune.platform.seg_only.evaluate_seg_only`).
    """
    from celltune.platform.seg_only import evaluate_seg_only

    scores: dict[tuple[str, str], TransferScore] = {}
    for label, loaded in models.items():
        seen = trained_datasets(loaded.card)
        for name, (data, sources) in datasets.items():
            table = evaluate_seg_only(loaded, data, overrides=overrides, options=options, sources=sources,
                                      show_progress=show_progress)
            pooled = table.dataset_instance()
            summary = pooled.summary() if pooled is not None else {}
            score = TransferScore(seg=table.mean()["SEG"], f1=summary.get("f1@0.5"),
                                  frames=sum(row.frames for row in table.rows), seen=name in seen)
            scores[(label, name)] = score
            if on_score is not None:
                on_score(label, name, score)
    return TransferTable(models=tuple(models), datasets=tuple(datasets), scores=scores)


def log_transfer(table: TransferTable, label: str, *, run_id: str, tracking_uri: str) -> None:
    """Log model ``label``'s row as metrics ``transfer/<dataset>/SEG`` (and ``f1@0.5``) to MLflow run ``run_id``,
    with the whole table (CSV) and its heat-map under ``transfer/``."""
    from celltune.platform.tracking import RunLogger

    metrics: dict[str, float] = {}
    for dataset in table.datasets:
        score = table.scores[(label, dataset)]
        if score.seg is not None:
            metrics[f"transfer/{dataset}/SEG"] = score.seg
        if score.f1 is not None:
            metrics[f"transfer/{dataset}/f1@0.5"] = score.f1
    run = RunLogger(tracking_uri=tracking_uri, run_id=run_id)
    run.log_metrics(metrics, step=0)
    with tempfile.TemporaryDirectory(prefix="celltune-transfer-") as scratch:
        run.log_artifact(table.write(Path(scratch) / "transfer.csv"), ARTIFACT_DIR)
        run.log_artifact(write_heatmap(table, Path(scratch) / "transfer.png"), ARTIFACT_DIR)


def write_heatmap(table: TransferTable, path: Path) -> Path:
    """The models x datasets SEG heat-map as a PNG (atomically)."""
    import numpy as np

    from celltune.platform.atomic_files import save_figure_atomic
    from celltune.platform.plots import transfer_heatmap_figure

    values = np.array([[_nan(table.scores[(m, d)].seg) for d in table.datasets] for m in table.models], dtype=float)
    seen = np.array([[table.scores[(m, d)].seen for d in table.datasets] for m in table.models], dtype=bool)
    return save_figure_atomic(transfer_heatmap_figure(list(table.models), list(table.datasets), values, seen), path)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
