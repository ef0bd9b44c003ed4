"""The model's contract with its input, checked before any inference: dimensionality, time window, thresholds,
tracking parameters and normalization.

:func:`check_prediction` runs every check once, from the sequences' headers, so a typo or a wrong model fails
before minutes of inference; the per-sequence code (:func:`celltune.platform.predict_one.iter_predict_sequence`,
the Ray tasks) trusts it and checks nothing again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from celltune.data_prep import store_format as sf
from celltune.data_prep.common import UserInputError
from celltune.platform.cell_tracker import track_sequence
from celltune.platform.predict_options import PredictOptions
from celltune.trainables.model_card import ModelCard

TRACKING_KEYS = ("max_displacement", "min_overlap", "divisions", "spacing")
# CTC dataset names carry the dimensionality: DIC-C2DH-HeLa, Fluo-N3DH-CE, PhC-C2DL-PSC, ...
_CTC_DIMS_RE = re.compile(r"^[CN]([23])D[HL]$")


def check_prediction(model, card: ModelCard, postprocess_params: Mapping[str, Any], options: PredictOptions,
                     inputs: Iterable[tuple[str, int]], uri: str = "the model") -> None:
    """Everything about the model, thresholds and options that can be checked before any inference.

    Args:
        model: the network (its ``spec.time_window``).
        card: the model's card (training stores, target kind, normalization).
        postprocess_params: the thresholds prediction will use.
        options: the prediction settings (``tta``, ``track``, ``tracking``).
        inputs: ``(where, ndim)`` of every input sequence: how messages name it and its frames' dimensionality
            (from :meth:`~celltune.platform.predict_inputs.SequenceSource.probe`).
        uri: how messages name the model.

    Raises:
        UserInputError: a model trained on other dimensions or with a time window the input cannot fill, bad
            thresholds, bad tracking parameters, or a normalization this version does not know.
    """
    for where, ndim in inputs:
        check_model_fits(card, ndim, where, uri)
        _check_time_window(model, ndim, where, options.tta, options.scale)
        if options.track:
            _check_tracking(options.tracking, ndim)
    checked_postprocess_params(card.target_kind, postprocess_params)
    _check_normalization(card)


def model_ndims(card: ModelCard) -> frozenset[int] | None:
    """Frame dimensionalities (2 and/or 3) the model was trained on, or None when that cannot be told.

    Read from the training stores' attributes when they are still there, else from CTC dataset names
    (``Fluo-N3DH-CE`` is 3D); one dataset of unknown dimensionality makes the answer None.
    """
    dims: set[int] = set()
    for store in card.training_stores:
        attrs = sf.store_attrs(store) or {}
        if attrs.get("ndim") in (2, 3):
            dims.add(int(attrs["ndim"]))
            continue
        name = Path(str(store)).name.removesuffix(sf.STORE_SUFFIX)
        found = {int(m.group(1)) for part in name.split("-") if (m := _CTC_DIMS_RE.match(part))}
        if len(found) != 1:
            return None
        dims |= found
    return frozenset(dims) or None


def check_model_fits(card: ModelCard, ndim: int, where: str, uri: str = "the model") -> None:
    """Refuse a model trained only on 3D data for 2D frames and vice versa.

    Raises:
        UserInputError: the model's training data has another dimensionality than the input.
    """
    dims = model_ndims(card)
    if dims is not None and ndim not in dims:
        trained = " and ".join(f"{d}D" for d in sorted(dims))
        raise UserInputError(f"{where}: {ndim}D frames, but {uri} was trained on {trained} data only")


def checked_postprocess_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Thresholds checked up front (names and values), so a typo fails before any inference."""
    from celltune.trainables.architectures import OUT_CHANNELS
    from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS, postprocess

    if kind not in DEFAULT_POSTPROCESS_PARAMS:
        raise UserInputError(f"model target_kind={kind!r}: unknown; expected one of "
                             f"{', '.join(sorted(DEFAULT_POSTPROCESS_PARAMS))}")
    postprocess(kind, np.zeros((OUT_CHANNELS[kind], 4, 4), np.float32), **params)
    return dict(params)


def _check_time_window(model, ndim: int, where: str, tta: bool | None = False, scale: float | None = None) -> None:
    """Temporal models slide over 2D sequences at their own resolution; their windows of 3D volumes are not
    defined, nor are TTA and resampling."""
    from celltune.trainables.temporal_inference import time_window_of

    window = time_window_of(model)
    if window > 1 and ndim != 2:
        raise UserInputError(f"{where}: the model sees windows of {window} 2D frames; this sequence has {ndim}D "
                             f"frames")
    if window > 1 and tta:
        raise UserInputError(f"{where}: --tta averages single frames; the model sees windows of {window} frames")
    if window > 1 and scale not in (None, 1.0):
        raise UserInputError(f"{where}: --scale {scale:g} resamples single frames; the model sees windows of "
                             f"{window} frames at their own resolution")


def _check_tracking(params: Mapping[str, Any], ndim: int) -> None:
    """Tracker parameters checked by name, and by value on an empty sequence of ``ndim`` frames."""
    unknown = sorted(set(params) - set(TRACKING_KEYS))
    if unknown:
        raise UserInputError(f"tracking: unknown parameter {unknown[0]!r}; allowed: {', '.join(TRACKING_KEYS)}")
    track_sequence([np.zeros((2,) * ndim, np.int32)], **params)  # checks every value


def _check_normalization(card: ModelCard) -> None:
    """Refuse a card whose normalization this version cannot apply."""
    from celltune.trainables.data import NORMALIZATIONS

    if card.normalization not in NORMALIZATIONS:
        raise UserInputError(f"model card: normalization={card.normalization!r}; expected one of "
                             f"{', '.join(NORMALIZATIONS)}")
