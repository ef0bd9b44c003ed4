"""One sequence through a trained model: statistics, normalization, probabilities, post-processing, tracking.

Each sequence is normalized with its own intensity statistics as the model's card says (``normalization``: the
same :class:`~celltune.data_prep.stats.IntensityStats` data prep stores), predicted full-frame by
:func:`~celltune.trainables.inference.predict_probabilities` (3D frames slice by slice, then labelled with 3D
connectivity; temporal models by :func:`~celltune.trainables.temporal_inference.predict_sequence_probabilities`),
post-processed with the model's thresholds and tracked by :func:`~celltune.platform.cell_tracker.track_sequence`.

:func:`predict_sequence` checks the model against the sequence first
(:func:`~celltune.platform.predict_checks.check_prediction`); :func:`iter_predict_sequence` is the unchecked
core that :mod:`celltune.platform.predict` runs, in this process or as Ray tasks, once it has checked every
sequence up front.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from celltune.data_prep.common import UserInputError
from celltune.data_prep.stats import IntensityStats
from celltune.platform.cell_tracker import TrackingResult, track_sequence
from celltune.platform.predict_checks import check_prediction
from celltune.platform.predict_inputs import SequenceFrames, SequenceSource
from celltune.platform.predict_options import PredictOptions
from celltune.trainables.model_card import ModelCard

RAW_CACHE_BYTES = 1 << 30  # decoded frames kept from the statistics pass for inference; re-read above this


@dataclass(frozen=True)
class SequenceOutcome:
    """One predicted sequence: its tracked masks and what it took."""

    name: str
    result: TrackingResult
    digits: int
    cells: int  # instances summed over frames
    seconds: float
    timings: dict[str, float]  # read, inference, postprocess, tracking (seconds)

    @property
    def frames(self) -> int:
        return len(self.result.masks)

    @property
    def tracks(self) -> int:
        return len(self.result.tracks)

    @property
    def divisions(self) -> int:
        return self.result.num_divisions


def iter_sequence_stats(frames: SequenceFrames, cache: dict[int, np.ndarray] | None = None,
                        timings: dict[str, float] | None = None) -> Generator[tuple[str, int], None, dict[str, float]]:
    """The sequence's intensity statistics (normalization input): data prep's when stored, else computed over
    every frame exactly as data prep does, yielding ``("read", 1)`` per frame read.

    Args:
        frames: the sequence.
        cache: frames decoded on the way are kept here (by index) up to :data:`RAW_CACHE_BYTES`, for inference;
            None keeps none.
        timings: ``"read"`` is increased by the seconds spent reading.

    Returns:
        The statistics, as the generator's return value (``stats = yield from ...``).
    """
    stored = frames.stored_stats()
    if stored is not None:
        return stored
    accumulator: IntensityStats | None = None
    kept = 0
    for t in range(frames.num_frames):
        clock = time.perf_counter()
        frame = frames.read(t)
        if accumulator is None:
            accumulator = IntensityStats(frame.dtype)
        accumulator.add(frame)
        if cache is not None and kept + frame.nbytes <= RAW_CACHE_BYTES:
            cache[t] = frame
            kept += frame.nbytes
        if timings is not None:
            timings["read"] += time.perf_counter() - clock
        yield ("read", 1)
    if accumulator is None:
        raise UserInputError(f"{frames.source.where}: no frames")
    return accumulator.result()


def sequence_stats(frames: SequenceFrames) -> dict[str, float]:
    """:func:`iter_sequence_stats` run to the end, keeping no frames."""
    reading = iter_sequence_stats(frames)
    while True:
        try:
            next(reading)
        except StopIteration as done:
            return done.value


def frames_as_tracks(labels: Sequence[np.ndarray]) -> TrackingResult:
    """Each frame's objects as tracks of one frame (ids shifted to be unique across frames): a result
    folder that passes the CTC checks without linking anything."""
    out = np.zeros((len(labels), *labels[0].shape), dtype=np.int32)
    rows = []
    offset = 0
    for t, frame in enumerate(labels):
        ids = np.unique(frame)
        ids = ids[ids > 0]
        lut = np.zeros(int(frame.max()) + 1 if frame.size else 1, dtype=np.int32)
        lut[ids] = np.arange(offset + 1, offset + ids.size + 1, dtype=np.int32)
        out[t] = lut[frame]
        rows.extend([offset + k, t, t, 0] for k in range(1, ids.size + 1))
        offset += ids.size
    return TrackingResult(masks=out, tracks=np.array(rows, dtype=np.int64).reshape(-1, 4))


def frame_probabilities(model, card: ModelCard, images: Sequence[np.ndarray], *, scale: float,
                        options: PredictOptions, previous: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-class probabilities ``(C, Y, X)`` or ``(C, Z, Y, X)`` of normalized frames (2D) or volumes (3D, their
    z-slices through the 2D network); a time-window model sees each frame's window, reaching into ``previous``
    (the frames before these)."""
    from celltune.trainables.inference import activation_for
    from celltune.trainables.temporal_inference import predict_frame_probabilities

    tta = card.tta if options.tta is None else options.tta
    settings = {"size_multiple": card.size_multiple, "activation": activation_for(card.target_kind),
                "device": options.device, "amp": options.amp, "batch_size": options.batch_size,
                "max_tile": options.max_tile, "scale": scale, "tta": tta}
    if images[0].ndim == 2:
        return list(predict_frame_probabilities(model, np.stack(images), previous=previous, **settings))
    return [np.moveaxis(predict_frame_probabilities(model, image, **settings), 1, 0) for image in images]


def iter_predict_sequence(model, card: ModelCard, postprocess_params: Mapping[str, Any], source: SequenceSource,
                          options: PredictOptions = PredictOptions()) -> Iterator[tuple[str, Any]]:
    """Predict one sequence, yielding ``("read", n)`` and ``("predict", n)`` after every n frames, then
    ``("done", SequenceOutcome)``; a generator so a Ray task can stream progress without threads.

    Checks nothing about the model: the caller has run
    :func:`~celltune.platform.predict_checks.check_prediction` for this sequence (as :func:`predict_sequence`
    and :func:`~celltune.platform.predict.predict_to_folder` do). See :func:`predict_sequence` for the arguments.
    """
    from celltune.trainables.data import normalize
    from celltune.trainables.target_kinds import postprocess
    from celltune.trainables.temporal_inference import time_window_of

    started = time.perf_counter()
    kind, method = card.target_kind, card.normalization
    params = dict(postprocess_params)
    scale = options.scale if options.scale is not None else card.scale_for()
    time_window = time_window_of(model)
    previous: np.ndarray | None = None  # the frames before this batch, for temporal models' windows
    timings = {"read": 0.0, "inference": 0.0, "postprocess": 0.0, "tracking": 0.0}

    frames = SequenceFrames(source)
    cache: dict[int, np.ndarray] = {}  # frames decoded for the statistics, kept for inference up to a budget
    stats = yield from iter_sequence_stats(frames, cache, timings)
    labels: list[np.ndarray] = []
    cells = 0
    step = max(1, options.batch_size)
    for first in range(0, frames.num_frames, step):
        clock = time.perf_counter()
        last = min(first + step, frames.num_frames)
        raw = [cache.pop(t) if t in cache else frames.read(t) for t in range(first, last)]
        images = [normalize(frame, stats, method) for frame in raw]
        timings["read"] += time.perf_counter() - clock
        clock = time.perf_counter()
        probs = frame_probabilities(model, card, images, scale=scale, options=options, previous=previous)
        if time_window > 1:  # the frames before the next batch, for the windows reaching back into them
            batch = np.stack(images)
            previous = (batch if previous is None else np.concatenate([previous, batch]))[-(time_window - 1):]
        timings["inference"] += time.perf_counter() - clock
        clock = time.perf_counter()
        for p in probs:
            frame_labels = postprocess(kind, p, **params)
            cells += int(frame_labels.max()) if frame_labels.size else 0
            labels.append(frame_labels)
        timings["postprocess"] += time.perf_counter() - clock
        yield ("predict", len(raw))
    clock = time.perf_counter()
    result = track_sequence(labels, **options.tracking) if options.track else frames_as_tracks(labels)
    timings["tracking"] = time.perf_counter() - clock
    yield ("done", SequenceOutcome(name=source.name, result=result, digits=source.digits, cells=cells,
                                   seconds=time.perf_counter() - started, timings=timings))


def predict_sequence(
    model,
    card: ModelCard,
    postprocess_params: Mapping[str, Any],
    source: SequenceSource,
    options: PredictOptions = PredictOptions(),
    *,
    show_progress: bool = False,
) -> SequenceOutcome:
    """Check the model against one sequence, then segment and track it in this process.

    Args:
        model: the network (e.g. ``LoadedModel.model``), mapping ``(B, 1, H, W)`` to logits.
        card: the model's card (``LoadedModel.card``: target kind, size multiple, normalization, scale,
            ``normalization``, ``train_config``).
        postprocess_params: thresholds for the target kind (e.g. ``LoadedModel.postprocess_params(dataset)``);
            unset ones use the package defaults.
        source: the sequence (see :func:`~celltune.platform.predict_inputs.find_sequences`).
        options: device, tiling, batching and tracking settings.
        show_progress: tqdm bars over frames (reading for statistics, then predicting, with an ETA).

    Raises:
        UserInputError: unreadable or inconsistent frames, a model trained on other dimensions, bad
            thresholds or tracking parameters.
    """
    from tqdm.auto import tqdm

    probe = source.probe()
    check_prediction(model, card, postprocess_params, options, [(source.where, probe.ndim)])
    bars: dict[str, Any] = {}
    try:
        for event, payload in iter_predict_sequence(model, card, postprocess_params, source, options):
            if event == "done":
                return payload
            if event not in bars:
                verb = "reading" if event == "read" else "predicting"
                bars[event] = tqdm(total=probe.num_frames, desc=f"{verb} {source.name}", unit="frame",
                                   disable=None if show_progress else True, dynamic_ncols=True)
            bars[event].update(payload)
    finally:
        for bar in bars.values():
            bar.close()
    raise RuntimeError(f"internal error: prediction of {source.where} ended without a result")
