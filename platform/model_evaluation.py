"""A model scored on a CTC dataset: predict every sequence that has ground truth, score the result folders
with the official measures, and log the scores to the run that trained the model (`celltune evaluate --model`,
the demo, transfer tables).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def dataset_sequences(data: Path) -> list:
    """The sequences of CTC dataset folder ``data`` that can be scored: ``NN/`` frames with ``NN_GT/TRA``.

    Raises:
        UserInputError: no such folder, no sequence folders, or none with GT tracking markers.
    """
    from celltune.data_prep.common import UserInputError
    from celltune.platform.predict_inputs import ctc_dataset_sources

    data = Path(data)
    sources = ctc_dataset_sources(data, "NN/tNNN.tif and NN_GT/TRA")
    scored = [s for s in sources if (data / f"{s.name}_GT" / "TRA").is_dir()]
    skipped = sorted(s.name for s in sources if s not in scored)
    if not scored:
        raise UserInputError(f"{data}: no sequence has ground truth to score against (no NN_GT/TRA folder for "
                             f"{', '.join(skipped)})")
    if skipped:
        logger.warning("%s: no GT for sequence(s) %s; not predicted", data, ", ".join(skipped))
    return scored


def evaluate_model(
    loaded,
    data: Path,
    *,
    out: Path | None = None,
    dataset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    options=None,
    address: str | None = None,
    use_ray: bool | None = None,
    overwrite: bool = False,
    seg: bool | None = None,
    threads: int = 1,
    show_progress: bool = False,
    sources: list | None = None,
    on_sequence: Callable | None = None,
):
    """Predict every scorable sequence of CTC dataset ``data`` with ``loaded`` and score it against the GT.

    Args:
        loaded: a ``LoadedModel`` (``model_registry.load_model``).
        data: CTC dataset folder; ``NN/`` is predicted when ``NN_GT/TRA`` exists.
        out: keep the ``NN_RES`` folders here (default: a temporary folder, removed afterwards).
        dataset: whose tuned thresholds to use (default: the folder name of ``data``).
        overrides: thresholds set by hand over the model's.
        options: ``PredictOptions`` (device, tiling, tracking).
        address, use_ray: as in :func:`celltune.platform.predict.predict_to_folder`.
        overwrite: replace a non-empty ``out``.
        seg, threads, show_progress: as in :func:`celltune.platform.evaluate.evaluate_results`.
        sources: the sequences, when already found by :func:`dataset_sequences`.
        on_sequence: called with each sequence's prediction summary.

    Returns:
        ``(EvaluationTable, [SequenceSummary, ...])``.

    Raises:
        UserInputError: see :func:`dataset_sequences`, ``predict_to_folder`` and ``evaluate_results``.
    """
    from celltune.platform.evaluate import evaluate_results
    from celltune.platform.predict import predict_to_folder

    data = Path(data)
    sources = dataset_sequences(data) if sources is None else sources
    params, options = evaluation_settings(loaded, data, dataset=dataset, overrides=overrides, options=options)
    scratch = None
    if out is None:
        scratch = Path(tempfile.mkdtemp(prefix="celltune-evaluate-"))
        out = scratch / "results"
    try:
        summaries = predict_to_folder(
            loaded.model, loaded.card, params, data, out, options, sources=sources,
            collection=True, use_ray=use_ray, address=address, overwrite=overwrite, model_uri=loaded.ref.uri,
            show_progress=show_progress, on_sequence=on_sequence,
        )
        table = evaluate_results(out, data, seg=seg, threads=threads, show_progress=show_progress)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return table, summaries


def evaluation_settings(loaded, data: Path, *, dataset: str | None = None,
                        overrides: Mapping[str, Any] | None = None, options=None):
    """The thresholds and ``PredictOptions`` (its scale) ``loaded`` predicts ``data`` with: those tuned for
    ``dataset`` (default: the folder's name, when the model knows it), with ``overrides`` on top."""
    from celltune.platform.predict_options import PredictOptions, prediction_thresholds, with_model_scale

    name = dataset or Path(data).resolve().name
    tuned = dataset is not None or name in loaded.card.postprocess_per_dataset
    params = prediction_thresholds(loaded.card, name if tuned else None, overrides or {})
    known = name in loaded.card.scale
    return params, with_model_scale(options or PredictOptions(), loaded.card, name if known else dataset)


def log_evaluation(table, dataset: str, *, run_id: str, tracking_uri: str) -> None:
    """Log per-sequence measures as ``eval/<dataset>/<seq>/<MEASURE>`` (and ``.../mean/...`` over sequences)
    and the printed table as ``evaluation/<dataset>.txt`` into MLflow run ``run_id``."""
    from celltune.platform.evaluate import MEASURES, write_precision_recall_curve
    from celltune.platform.tracking import RunLogger

    metrics: dict[str, float] = {}
    for row in table.rows:
        for measure in MEASURES:
            value = row.measure(measure)
            if value is not None:
                metrics[f"eval/{dataset}/{row.name}/{measure}"] = value
    for measure, value in table.mean().items():
        if value is not None and len(table.rows) > 1:
            metrics[f"eval/{dataset}/mean/{measure}"] = value
    metrics.update({f"eval/{dataset}/{key}": value for key, value in table.instance_metrics().items()})
    run = RunLogger(tracking_uri=tracking_uri, run_id=run_id)
    run.log_metrics(metrics, step=0)  # RunLogger maps names MLflow rejects (SIM+ -> SIMplus)
    with tempfile.TemporaryDirectory(prefix="celltune-evaluation-") as scratch:
        path = Path(scratch) / f"{dataset}.txt"
        path.write_text(table.format() + "\n", encoding="utf-8")
        run.log_artifact(path, "evaluation")
        curve = write_precision_recall_curve(table, Path(scratch) / f"{dataset}_precision_recall.png",
                                             title=f"{dataset}: instance precision and recall")
        if curve is not None:
            run.log_artifact(curve, "evaluation")
