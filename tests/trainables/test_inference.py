"""Full-image inference: tiling must not change the result, shapes come back at the input size."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.trainables import inference
from celltune.trainables.inference import activation_for, predict_probabilities, resolve_amp, resolve_device


class TinyConv(nn.Module):
    """Two 3x3 convolutions: receptive-field radius 2, any input size."""

    def __init__(self, out_channels: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, out_channels, 3, padding=1))
        self.input_shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_shapes.append(tuple(x.shape))
        return self.net(x)


class Multiple16(nn.Module):
    """A small encoder-decoder that only accepts sides divisible by 16 (radius about 10 px, 4-px pooling grid)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.down = nn.Sequential(nn.AvgPool2d(4), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.up = nn.Upsample(scale_factor=4, mode="nearest")
        self.head = nn.Conv2d(8, 3, 1)
        self.training_flags: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 16 or x.shape[-1] % 16:
            raise RuntimeError(f"input {tuple(x.shape)} is not a multiple of 16")
        self.training_flags.append(self.training)
        features = torch.relu(self.stem(x))
        return self.head(torch.cat([features, self.up(self.down(features))], dim=1))


def _images(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# An overlap of 50 is rounded up to 64 so tiles start on the 16-grid; unrounded, the pooling grid would shift.
@pytest.mark.parametrize(("model_cls", "overlap"), [(TinyConv, 64), (Multiple16, 64), (Multiple16, 50)])
def test_tiled_equals_untiled_on_odd_sizes(model_cls: type[nn.Module], overlap: int) -> None:
    images = _images(2, 301, 187)
    model = model_cls()
    whole = predict_probabilities(model, images, size_multiple=16, activation="softmax", max_tile=None)
    tiled = predict_probabilities(
        model, images, size_multiple=16, activation="softmax", max_tile=128, tile_overlap=overlap, batch_size=3
    )
    assert whole.shape == tiled.shape == (2, 3, 301, 187)
    np.testing.assert_allclose(tiled, whole, atol=2e-6)


def test_tiles_have_the_limit_size_and_whole_frames_are_padded_to_the_multiple() -> None:
    model = TinyConv()
    predict_probabilities(model, _images(301, 187), size_multiple=16, activation="softmax", max_tile=128)
    # padded 304 x 192; starts 0, 64, 128, 176 (rows) and 0, 64 (columns): 8 tiles of 128 x 128 in batches of 4
    assert model.input_shapes == [(4, 1, 128, 128), (4, 1, 128, 128)]
    model.input_shapes.clear()
    predict_probabilities(model, _images(301, 187), size_multiple=16, activation="softmax", max_tile=None)
    assert model.input_shapes == [(1, 1, 304, 192)]


def test_untiled_without_padding_is_the_model_softmax() -> None:
    images = _images(3, 37, 29)
    model = TinyConv()
    probs = predict_probabilities(model, images, size_multiple=1, activation="softmax", max_tile=None, batch_size=2)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)[:, None]).softmax(dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_sigmoid_activation_matches_model_sigmoid() -> None:
    images = _images(1, 40, 50)
    model = TinyConv(out_channels=2)
    probs = predict_probabilities(model, images, size_multiple=1, activation="sigmoid", max_tile=None)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)[:, None]).sigmoid().numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert probs.shape == (1, 2, 40, 50)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (17, 33), (64, 64), (100, 7), (2, 31, 18)])
def test_multiple_16_model_accepts_odd_sizes(shape: tuple[int, ...]) -> None:
    probs = predict_probabilities(
        Multiple16(), _images(*shape), size_multiple=16, activation="softmax", max_tile=64, tile_overlap=16
    )
    frames = 1 if len(shape) == 2 else shape[0]
    assert probs.shape == (frames, 3, *shape[-2:])
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert probs.min() >= 0.0


def test_batches_not_dividing_frame_count_mix_tiles_of_frames() -> None:
    images = _images(5, 70, 90, seed=3)
    model = Multiple16()
    together = predict_probabilities(
        model, images, size_multiple=16, activation="softmax", max_tile=64, tile_overlap=16, batch_size=3
    )
    for index in range(5):
        alone = predict_probabilities(
            model, images[index], size_multiple=16, activation="softmax", max_tile=64, tile_overlap=16, batch_size=7
        )
        np.testing.assert_allclose(together[index], alone[0], atol=1e-6)


def test_model_mode_is_restored_and_eval_used() -> None:
    model = Multiple16().train()
    predict_probabilities(model, _images(20, 20), size_multiple=16, activation="softmax")
    assert model.training_flags == [False] and model.training


def test_activation_for_target_kinds() -> None:
    assert activation_for("tertiary") == "softmax"
    assert activation_for("binary") == "softmax"
    assert activation_for("mask_marker") == "sigmoid"
    with pytest.raises(UserInputError, match="unknown target kind 'instance'"):
        activation_for("instance")


def test_resolve_amp_on_cpu_is_always_off(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "_AMP_WARNED", set())
    cpu = torch.device("cpu")
    assert resolve_amp(cpu, None) is None
    assert resolve_amp(cpu, False) is None
    with caplog.at_level(logging.WARNING, logger="celltune.trainables.inference"):
        assert resolve_amp(cpu, True) is None
        assert resolve_amp(cpu, True) is None
    assert caplog.text.count("amp=True ignored") == 1


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_resolve_amp_on_cuda_picks_bf16_when_supported(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    cuda = torch.device("cuda")
    assert resolve_amp(cuda, None) == expected
    assert resolve_amp(cuda, True) == expected
    assert resolve_amp(cuda, False) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="device='cuda': CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        predict_probabilities(TinyConv(), _images(8, 8), size_multiple=1, activation="softmax", device="cuda:0")


def test_resolve_device_rejects_nonsense() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserInputError, match="not a valid torch device"):
        resolve_device("gpu-please")


@pytest.mark.parametrize(
    ("images", "options", "message"),
    [
        (np.zeros((8, 8), np.uint16), {}, "dtype uint16"),
        (np.zeros((2, 2, 8, 8), np.float32), {}, "shape"),
        (np.full((8, 8), np.nan, np.float32), {}, "NaN"),
        (np.zeros((8, 8), np.float32), {"activation": "relu"}, "activation"),
        (np.zeros((8, 8), np.float32), {"max_tile": 100, "tile_overlap": 64}, "max_tile=100"),
        (np.zeros((8, 8), np.float32), {"batch_size": 0}, "batch_size"),
        (np.zeros((8, 8), np.float32), {"size_multiple": 0}, "size_multiple"),
    ],
)
def test_bad_arguments_raise_user_input_error(images: np.ndarray, options: dict, message: str) -> None:
    kwargs = {"size_multiple": 16, "activation": "softmax", **options}
    with pytest.raises(UserInputError, match=message):
        predict_probabilities(TinyConv(), images, **kwargs)


def test_model_changing_the_size_is_reported() -> None:
    shrinking = nn.Conv2d(1, 3, 3)  # no padding: output is 2 px smaller
    with pytest.raises(UserInputError, match="does not match its input"):
        predict_probabilities(shrinking, _images(16, 16), size_multiple=16, activation="softmax")
