"""SEG on the ground-truth frames only (``celltune evaluate --model M --data DS --seg-only``).

The full evaluation predicts and tracks every frame because DET and TRA need them; SEG needs only the frames
that have GT SEG (9 of 84 per HeLa sequence, 30 of 92 for GOWT1's first). This path predicts those frames,
with the same normalization statistics, thresholds and resampling as the full path, and scores them with the
CTC SEG definition (:func:`celltune.trainables.metrics.seg_counts`) and the instance measures, so its SEG equals
the full path's on the same frames.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celltune.data_prep.common import UserInputError
from celltune.platform.evaluate import EvaluationTable, SequenceScores

_SEG_FRAME_RE = re.compile(r"^man_seg_?(\d{3,4})(?:_(\d{3,4}))?\.tif$")  # frame, and slice for 3D slice GT
_RAW_FRAME_RE = re.compile(r"^t(\d{3,4})\.tiff?$")


@dataclass(frozen=True)
class GroundTruthFrame:
    """One GT SEG file: frame ``t`` (slice ``z`` of it for 3D slice annotations) of a sequence."""

    t: int
    z: int | None
    path: Path


def gt_seg_frames(gt: Path) -> list[GroundTruthFrame]:
    """The GT SEG files of sequence GT folder ``gt`` (``NN_GT``), by frame then slice; [] when there are none."""
    seg = Path(gt) / "SEG"
    if not seg.is_dir():
        return []
    found = []
    for path in seg.iterdir():
        if match := _SEG_FRAME_RE.match(path.name):
            found.append(GroundTruthFrame(int(match.group(1)), None if match.group(2) is None else int(match.group(2)),
                                          path))
    return sorted(found, key=lambda f: (f.t, -1 if f.z is None else f.z))


def seg_only_sequences(data: Path) -> list:
    """The sequences of CTC dataset folder ``data`` that have GT SEG frames.

    Raises:
        UserInputError: no such folder, not a CTC dataset folder, or no sequence with GT SEG frames.
    """
    from celltune.platform.predict_inputs import ctc_dataset_sources

    data = Path(data)
    sources = ctc_dataset_sources(data, "NN/tNNN.tif and NN_GT/SEG")
    scored = [s for s in sources if gt_seg_frames(data / f"{s.name}_GT")]
    if not scored:
        raise UserInputError(f"{data}: no sequence has GT SEG frames (NN_GT/SEG/man_segTTT.tif), which --seg-only "
                             "scores")
    return scored


def evaluate_seg_only(loaded, data: Path, *, dataset: str | None = None, overrides: Mapping[str, Any] | None = None,
                      options=None, sources: list | None = None, show_progress: bool = False) -> EvaluationTable:
    """SEG and the instance measures of ``loaded`` on every GT SEG frame of CTC dataset ``data``; nothing else
    is predicted and nothing is written. DET, TRA and the OP measures are left empty.

    Args:
        loaded: a ``LoadedModel``; dataset, overrides, options as in
            :func:`celltune.platform.model_evaluation.evaluate_model`.
        sources: the sequences, when already found by :func:`seg_only_sequences`.

    Raises:
        UserInputError: see :func:`seg_only_sequences`; a temporal model (its windows need the frames before);
            a GT frame without its raw frame, or shapes that differ.
    """
    from tqdm.auto import tqdm

    from celltune.platform.model_evaluation import evaluation_settings
    from celltune.trainables.temporal_inference import time_window_of

    data = Path(data)
    sources = seg_only_sequences(data) if sources is None else sources
    if time_window_of(loaded.model) > 1:
        raise UserInputError(f"{loaded.ref.uri}: the model sees windows of {time_window_of(loaded.model)} frames; "
                             "--seg-only predicts single frames, use the full evaluation")
    params, options = evaluation_settings(loaded, data, dataset=dataset, overrides=overrides, options=options)
    total = sum(len({f.t for f in gt_seg_frames(data / f"{s.name}_GT")}) for s in sources)
    rows = []
    with tqdm(total=total, desc="SEG frames", unit="frame", disable=None if show_progress else True) as bar:
        for source in sources:
            rows.append(_score_sequence(loaded, source, data / f"{source.name}_GT", params, options, bar))
    return EvaluationTable(rows=tuple(rows))


def _score_sequence(loaded, source, gt: Path, params: Mapping[str, Any], options, bar) -> SequenceScores:
    from celltune.platform.evaluate import read_labels
    from celltune.platform.predict_checks import check_model_fits, checked_postprocess_params
    from celltune.platform.predict_inputs import SequenceFrames
    from celltune.platform.predict_one import frame_probabilities, sequence_stats
    from celltune.trainables.data import normalize
    from celltune.trainables.metrics import InstanceScores, seg_counts, seg_score
    from celltune.trainables.target_kinds import postprocess

    card = loaded.card
    kind = card.target_kind
    params = checked_postprocess_params(kind, params)
    scale = options.scale if options.scale is not None else card.scale_for()
    frames = SequenceFrames(source)
    index = {int(m.group(1)): i for i, path in enumerate(source.frames) if (m := _RAW_FRAME_RE.match(path.name))}
    stats = sequence_stats(frames)
    annotated = gt_seg_frames(gt)
    by_frame: dict[int, list] = {}
    for frame in annotated:
        by_frame.setdefault(frame.t, []).append(frame)
    counts, instance = [], InstanceScores()
    times = sorted(by_frame)
    for first in range(0, len(times), max(1, options.batch_size)):
        batch = times[first:first + max(1, options.batch_size)]
        missing = [t for t in batch if t not in index]
        if missing:
            raise UserInputError(f"{by_frame[missing[0]][0].path}: no raw frame t{missing[0]:03d}.tif in {source.path}")
        raw = [frames.read(index[t]) for t in batch]
        check_model_fits(card, raw[0].ndim, source.where, loaded.ref.uri)
        images = [normalize(frame, stats, card.normalization) for frame in raw]
        for t, probabilities in zip(batch, frame_probabilities(loaded.model, card, images, scale=scale,
                                                               options=options), strict=True):
            labels = postprocess(kind, probabilities, **params)
            for annotation in by_frame[t]:
                predicted = labels if annotation.z is None else labels[annotation.z]
                reference = read_labels(annotation.path)
                if reference.shape != predicted.shape:
                    raise UserInputError(f"{annotation.path}: shape {reference.shape} differs from the predicted "
                                         f"frame {predicted.shape}")
                counts.append(seg_counts(reference, predicted))
                instance.add(reference, predicted)
            bar.update(1)
    return SequenceScores(name=source.name, res=source.path, gt=gt, frames=len(times), seg=seg_score(counts),
                          det=None, tra=None, op_csb=None, op_ctb=None, instance=instance)
