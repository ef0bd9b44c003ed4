"""Temporal (ConvLSTM) models in `celltune predict`: windows slide across batches as over the whole sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from celltune.data_prep.common import UserInputError
from celltune.data_prep.synth import SynthSpec, generate_dataset
from celltune.platform.predict_inputs import find_sequences
from celltune.platform.predict_one import predict_sequence
from celltune.platform.predict_options import PredictOptions
from celltune.trainables.architectures import build_model
from celltune.trainables.inference import activation_for
from celltune.trainables.model_card import ModelCard
from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS, postprocess
from celltune.trainables.temporal_inference import predict_sequence_probabilities


def _temporal_model():
    torch.manual_seed(0)
    model = build_model("convlstm_unet", width=8, stages=4, time_window=3).eval()
    description = ModelCard.from_mapping({"model": {**model.celltune_config, "target_kind": model.spec.target_kind,
                                                    "size_multiple": model.spec.size_multiple},
                                          "normalization": "minmax"})
    return model, description


def test_batches_of_a_temporal_model_equal_one_pass_over_the_whole_sequence(tmp_path):
    generate_dataset(tmp_path, SynthSpec(name="Seq", ndim=2, sequences=1, frames=7, size=48, cells=3, seed=4))
    (source,), _ = find_sequences(tmp_path / "Seq" / "01")
    model, description = _temporal_model()
    params = DEFAULT_POSTPROCESS_PARAMS[description.target_kind]
    small = predict_sequence(model, description, params, source, PredictOptions(batch_size=2, track=False))
    large = predict_sequence(model, description, params, source, PredictOptions(batch_size=16, track=False))
    assert len(small.result.masks) == 7
    for a, b in zip(small.result.masks, large.result.masks, strict=True):
        np.testing.assert_array_equal(a > 0, b > 0)

    frames = np.stack([np.asarray(f, np.float32) for f in _raw_frames(tmp_path / "Seq" / "01")])
    images = (frames - frames.min()) / (frames.max() - frames.min())
    probs = predict_sequence_probabilities(model, images, time_window=3, size_multiple=16,
                                           activation=activation_for("tertiary"))
    expected = [postprocess("tertiary", p, **params) > 0 for p in probs]
    for got, want in zip(small.result.masks, expected, strict=True):
        np.testing.assert_array_equal(got > 0, want)


def test_temporal_models_refuse_3d_sequences(tmp_path):
    generate_dataset(tmp_path, SynthSpec(name="Vol", ndim=3, sequences=1, frames=3, size=32, depth=4, cells=2, seed=1))
    (source,), _ = find_sequences(tmp_path / "Vol" / "01")
    model, description = _temporal_model()
    with pytest.raises(UserInputError, match="windows of 3 2D frames; this sequence has 3D frames"):
        predict_sequence(model, description, DEFAULT_POSTPROCESS_PARAMS["tertiary"], source,
                         PredictOptions(track=False))


def test_temporal_models_refuse_tta_and_resampling_before_reading_a_frame(tmp_path):
    generate_dataset(tmp_path, SynthSpec(name="Seq", sequences=1, frames=3, size=32, cells=2, seed=1))
    (source,), _ = find_sequences(tmp_path / "Seq" / "01")
    model, description = _temporal_model()
    params = DEFAULT_POSTPROCESS_PARAMS["tertiary"]
    with pytest.raises(UserInputError, match="--tta averages single frames"):
        predict_sequence(model, description, params, source, PredictOptions(track=False, tta=True))
    with pytest.raises(UserInputError, match="--scale 0.5 resamples single frames"):
        predict_sequence(model, description, params, source, PredictOptions(track=False, scale=0.5))


def _raw_frames(folder):
    import tifffile

    return [tifffile.imread(path) for path in sorted(folder.glob("t*.tif"))]
