"""The one sliding-window engine behind frames and time windows, and the frame/window dispatch helper."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.inference import predict_probabilities
from celltune.trainables.temporal_inference import (
    predict_frame_probabilities,
    predict_sequence_probabilities,
    predict_window_probabilities,
    time_window_of,
)
from celltune.trainables.tta import DIHEDRAL, with_tta


class FrameOrWindow(nn.Module):
    """Two 3x3 convolutions of the last frame plus the window mean; a ``(B, 1, h, w)`` frame is a window of one.

    With ``valid=True`` the convolutions are unpadded: output 2 px smaller per side (``output_crop``), valid on
    inputs of ``min_input_size + k * size_multiple`` px.
    """

    def __init__(self, *, valid: bool = False, time_window: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        padding = 0 if valid else 1
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=padding), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=padding))
        self.output_crop = 2 if valid else 0
        self.size_multiple, self.min_input_size = 4, 8
        if time_window is not None:
            self.spec = SimpleNamespace(time_window=time_window)
        self.batches: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(x.shape))
        if x.dim() == 4:
            x = x.unsqueeze(1)
        crop = self.output_crop
        mean = x.mean(dim=1)[..., crop : x.shape[-2] - crop, crop : x.shape[-1] - crop]
        return self.net(x[:, -1]) + mean


def _random(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


OPTIONS = {"size_multiple": 4, "activation": "softmax", "batch_size": 3}


# --- the engine: frames and windows alike ------------------------------------------------------------------------


@pytest.mark.parametrize("valid", [False, True])
@pytest.mark.parametrize("max_tile", [None, 40])
def test_one_frame_windows_give_exactly_the_frame_prediction(valid: bool, max_tile: int | None) -> None:
    frames = _random(3, 61, 45)
    model = FrameOrWindow(valid=valid)
    by_frame = predict_probabilities(model, frames, max_tile=max_tile, tile_overlap=16, **OPTIONS)
    frame_batches, model.batches = model.batches, []
    by_window = predict_window_probabilities(model, frames[:, None], max_tile=max_tile, tile_overlap=16, **OPTIONS)
    np.testing.assert_array_equal(by_window, by_frame)
    # the same tiles in the same batches, with the time axis in front of the channel
    assert [(b, *rest) for b, _, *rest in model.batches] == frame_batches


@pytest.mark.parametrize("valid", [False, True])
def test_tiled_equals_untiled_on_both_paths(valid: bool) -> None:
    frames, windows = _random(2, 101, 70), _random(2, 3, 101, 70, seed=1)
    model = FrameOrWindow(valid=valid)
    for predict, stack in [(predict_probabilities, frames), (predict_window_probabilities, windows)]:
        whole = predict(model, stack, max_tile=None, **OPTIONS)
        model.batches = []
        tiled = predict(model, stack, max_tile=40, tile_overlap=16, **OPTIONS)
        assert whole.shape == tiled.shape == (2, 3, 101, 70)
        np.testing.assert_allclose(tiled, whole, atol=2e-6)
        assert max(batch[-2] for batch in model.batches) <= 40 and len(model.batches) > 2  # really cut into tiles


def test_valid_windows_are_one_pass_over_the_mirror_extended_window() -> None:
    windows = _random(1, 2, 13, 10, seed=2)
    model = FrameOrWindow(valid=True).eval()
    probs = predict_window_probabilities(model, windows, max_tile=None, **OPTIONS)
    # 13 x 10 needs outputs of 16 x 12 (min output 4 + k * 4): inputs 20 x 16, mirrored 3/4 and 3/3 px
    padded = np.pad(windows, ((0, 0), (0, 0), (3, 4), (3, 3)), mode="symmetric")
    with torch.no_grad():
        expected = model(torch.from_numpy(padded)[:, :, None]).softmax(dim=1)[:, :, 1:14, 1:11].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_window_batches_mix_tiles_of_windows_and_each_window_stands_alone() -> None:
    windows = _random(5, 2, 50, 30, seed=3)
    model = FrameOrWindow()
    together = predict_window_probabilities(model, windows, max_tile=32, tile_overlap=8, **OPTIONS)
    assert [batch[0] for batch in model.batches] == [3, 3, 3, 1]  # 5 windows x (2 x 1) tiles, across windows
    for index in range(5):
        alone = predict_window_probabilities(model, windows[index], max_tile=32, tile_overlap=8,
                                             **{**OPTIONS, "batch_size": 7})
        np.testing.assert_allclose(together[index], alone[0], atol=1e-6)


def test_windows_with_nan_are_refused() -> None:
    windows = _random(2, 2, 16, 16)
    windows[1, 0, 3, 3] = np.nan
    with pytest.raises(UserInputError, match="windows: contain NaN or infinite values"):
        predict_window_probabilities(FrameOrWindow(), windows, **OPTIONS)


# --- predict_frame_probabilities: one dispatch for frame and temporal models ---------------------------------------


def test_time_window_of_reads_the_spec() -> None:
    assert time_window_of(FrameOrWindow(time_window=3)) == 3
    assert time_window_of(FrameOrWindow(time_window=1)) == 1
    assert time_window_of(nn.Conv2d(1, 3, 3)) == 1


def test_frame_models_go_to_the_frame_predictor_with_scale_and_tta() -> None:
    frames = _random(2, 30, 22)
    model = FrameOrWindow()
    np.testing.assert_array_equal(predict_frame_probabilities(model, frames, scale=0.5, **OPTIONS),
                                  predict_probabilities(model, frames, scale=0.5, **OPTIONS))
    expected = with_tta(lambda x: predict_probabilities(model, x, **OPTIONS), frames, DIHEDRAL)
    np.testing.assert_array_equal(predict_frame_probabilities(model, frames, tta=True, **OPTIONS), expected)
    single = predict_frame_probabilities(model, frames[0], previous=frames[:0], **OPTIONS)  # previous: unused
    np.testing.assert_array_equal(single, predict_probabilities(model, frames[0], **OPTIONS))


def test_temporal_models_see_windows_from_previous_frames() -> None:
    sequence = _random(6, 30, 22, seed=4)
    model = FrameOrWindow(time_window=3)
    whole = predict_sequence_probabilities(model, sequence, time_window=3, **OPTIONS)
    chunk = predict_frame_probabilities(model, sequence[4:], previous=sequence[:4], **OPTIONS)
    np.testing.assert_array_equal(chunk, whole[4:])
    # A validation frame with its window (T frames ending at it): the frame, the window's first T - 1 as previous.
    window = sequence[2:5]
    single = predict_frame_probabilities(model, window[-1], previous=window[:-1], **OPTIONS)
    np.testing.assert_array_equal(single, predict_window_probabilities(model, window, **OPTIONS))


@pytest.mark.parametrize(("options", "message"), [({"scale": 0.5}, "scale=0.5: the model sees windows of 3"),
                                                  ({"tta": True}, "tta: averages single frames")])
def test_temporal_models_refuse_scale_and_tta(options: dict, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        predict_frame_probabilities(FrameOrWindow(time_window=3), _random(2, 16, 16), **options, **OPTIONS)
