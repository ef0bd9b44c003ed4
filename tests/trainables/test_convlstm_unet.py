"""The temporal ConvLSTM U-Net: shapes and options, windows from the loaders and for validation, the sliding-window
predictor (whole sequence = chunks), and a few training steps of the real loop on the demo stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.data_prep.reader import SequenceReader
from celltune.trainables.architectures import build_model, model_spec
from celltune.trainables.config import AugmentConfig, DataConfig, TrainConfig
from celltune.trainables.data import RandomCrops, dataset_frames, load_validation_frames, normalize
from celltune.trainables.inference import predict_probabilities
from celltune.trainables.models.convlstm_unet import ConvLSTMUNet
from celltune.trainables.temporal_inference import (
    predict_sequence_probabilities,
    predict_window_probabilities,
    sequence_windows,
)
from celltune.trainables.train_loop import WorkerContext, train


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: these small models gain nothing from two, and lose much when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _small(**options) -> nn.Module:
    torch.manual_seed(0)
    return build_model("convlstm_unet", **{"width": 8, "stages": 4, "time_window": 3, **options})


@pytest.mark.parametrize(("batch", "steps", "size"), [(2, 3, (16, 24)), (1, 5, (40, 8)), (3, 1, (8, 8))])
def test_windows_map_to_logits_of_the_last_frame_and_train(batch, steps, size):
    model = _small(target_kind="binary")
    windows = torch.rand(batch, steps, 1, *size)
    logits = model(windows)
    assert logits.shape == (batch, 2, *size)
    F.cross_entropy(logits, torch.randint(0, 2, (batch, *size))).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_the_past_frames_change_the_prediction_and_a_single_frame_is_a_window_of_one():
    model = _small().eval()
    torch.manual_seed(1)
    window = torch.rand(2, 3, 1, 16, 16)
    changed = window.clone()
    changed[:, 0] = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(model(window), model(changed))
        torch.testing.assert_close(model(window[:, -1]), model(window[:, -1:]))


def test_spec_and_options():
    spec = model_spec("convlstm_unet")
    assert (spec.time_window, spec.size_multiple, spec.target_kind, spec.out_channels) == (5, 16, "tertiary", 3)
    assert model_spec("convlstm_unet", time_window=3, stages=6).time_window == 3
    assert model_spec("convlstm_unet", stages=6).size_multiple == 32
    assert model_spec("unet").time_window == 1
    model = _small()
    assert isinstance(model, ConvLSTMUNet) and model.spec.time_window == 3
    for options, message in [({"time_window": 0}, "time_window=0"), ({"stages": 3}, "stages=3"),
                             ({"width": 12}, "width=12"), ({"norm": "layer"}, "norm='layer'")]:
        with pytest.raises(UserInputError, match=message):
            build_model("convlstm_unet", **options)
    with pytest.raises(UserInputError, match="not a multiple of 8"):
        model(torch.rand(1, 3, 1, 12, 16))
    with pytest.raises(UserInputError, match=r"expected \(B, T, 1, H, W\)"):
        model(torch.rand(1, 3, 2, 16, 16))


def test_sequence_windows_repeat_the_first_frame_and_continue_across_chunks():
    frames = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2), np.float32)
    windows = sequence_windows(frames, 3)
    assert windows.shape == (5, 3, 2, 2)
    assert [list(w[:, 0, 0]) for w in windows] == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    chunk = sequence_windows(frames[3:], 3, previous=frames[:3])
    np.testing.assert_array_equal(chunk, windows[3:])
    early = sequence_windows(frames[1:3], 3, previous=frames[:1])  # only one frame before: the sequence start
    np.testing.assert_array_equal(early, windows[1:3])
    np.testing.assert_array_equal(sequence_windows(frames, 1)[:, 0], frames)


def test_sliding_window_prediction_is_the_same_whole_or_in_chunks():
    model = _small()
    rng = np.random.default_rng(0)
    frames = rng.random((7, 20, 28)).astype(np.float32)  # odd sizes: reflection-padded to 24x32
    options = dict(time_window=3, size_multiple=8, activation="softmax", batch_size=3)
    whole = predict_sequence_probabilities(model, frames, **options)
    assert whole.shape == (7, 3, 20, 28)
    chunks = [predict_sequence_probabilities(model, frames[:2], **options),
              predict_sequence_probabilities(model, frames[2:3], previous=frames[:2], **options),
              predict_sequence_probabilities(model, frames[3:], previous=frames[:3], **options)]
    np.testing.assert_allclose(np.concatenate(chunks), whole, atol=1e-5)
    # Frame 0 sees itself three times; frame 4 sees frames 2, 3 and 4.
    def direct(window: np.ndarray) -> torch.Tensor:
        padded = np.pad(window, ((0, 0), (2, 2), (2, 2)), mode="reflect")
        with torch.no_grad():
            return model.eval()(torch.from_numpy(padded)[None, :, None])

    first, fourth = direct(frames[[0, 0, 0]]), direct(frames[2:5])
    np.testing.assert_allclose(whole[0], first.softmax(1)[0, :, 2:22, 2:30].numpy(), atol=1e-5)
    np.testing.assert_allclose(whole[4], fourth.softmax(1)[0, :, 2:22, 2:30].numpy(), atol=1e-5)


class _LocalTemporal(nn.Module):
    """A 3x3 conv of the last frame plus the window mean: a receptive field small enough for tiles to be exact."""

    size_multiple = 8

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # a single frame, as the frame predictor feeds it
            x = x.unsqueeze(1)
        return self.conv(x[:, -1]) + x.mean(dim=1)


def test_tiled_windows_equal_untiled_and_single_frames_match_the_frame_predictor():
    rng = np.random.default_rng(1)
    windows = rng.random((2, 4, 100, 70)).astype(np.float32)
    model = _LocalTemporal()
    options = dict(size_multiple=8, activation="sigmoid", batch_size=3)
    untiled = predict_window_probabilities(model, windows, max_tile=None, **options)
    tiled = predict_window_probabilities(model, windows, max_tile=48, tile_overlap=16, **options)
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)
    # A one-frame window is a frame: the window predictor then agrees with the single-frame predictor.
    one = predict_window_probabilities(model, windows[:, -1:], max_tile=48, tile_overlap=16, **options)
    frames = predict_probabilities(model, windows[:, -1], max_tile=48, tile_overlap=16, **options)
    np.testing.assert_allclose(one, frames, atol=1e-5)
    with pytest.raises(UserInputError, match="windows: dtype int64"):
        predict_window_probabilities(model, windows.astype(np.int64), **options)


def test_loader_windows_share_the_crop_and_end_at_the_target_frame(demo_stores):
    store = demo_stores / "Synth-Round.zarr"
    frames = dataset_frames(store, "all-gt", "train")
    options = dict(crop=32, margin=8, target_kind="tertiary", weights=False, normalization="minmax",
                   augment=AugmentConfig(), seed=0)
    single, windowed = RandomCrops(frames, **options), RandomCrops(frames, time_window=4, **options)
    for seed in range(6):
        one, window = single.sample(np.random.default_rng(seed)), windowed.sample(np.random.default_rng(seed))
        assert window["image"].shape == (4, 1, 48, 48) and one["image"].shape == (1, 48, 48)
        np.testing.assert_array_equal(window["image"][-1].numpy(), one["image"].numpy())
        np.testing.assert_array_equal(window["target"].numpy(), one["target"].numpy())
    # Without flips the crop can be found in the stored frames: frame t - k of the sequence, same window.
    plain = RandomCrops(frames, time_window=4, **{**options, "augment": AugmentConfig(flips_and_rotations=False)})
    rng = np.random.default_rng(3)
    frame = frames[int(np.random.default_rng(3).integers(len(frames)))]
    image = plain.sample(rng)["image"].numpy()[:, 0, 8:40, 8:40]
    reader = SequenceReader(frame.store, frame.sequence)
    stored = [normalize(reader.frame("raw", max(frame.t - k, 0)), reader.stats, "minmax") for k in (3, 2, 1, 0)]
    hits = [(y, x) for y in range(128 - 31) for x in range(128 - 31)
            if np.array_equal(stored[-1][y:y + 32, x:x + 32], image[-1])]
    assert hits and all(any(np.array_equal(s[y:y + 32, x:x + 32], i) for y, x in hits)
                        for s, i in zip(stored, image, strict=True))


def test_validation_frames_carry_windows_for_temporal_models(demo_stores):
    data = DataConfig(stores=[demo_stores / "Synth-Round.zarr"], configuration="all-gt")
    (frames,) = load_validation_frames(data, time_window=3).values()
    (plain,) = load_validation_frames(data).values()
    assert all(f.window is None for f in plain)
    assert frames and all(f.window.shape == (3, 128, 128) for f in frames)
    assert all(np.array_equal(f.window[-1], f.image) for f in frames)


def test_convlstm_unet_trains_in_the_demo_setting_on_windows(demo_stores, monkeypatch):
    seen: list[tuple[int, ...]] = []
    forward = ConvLSTMUNet.forward

    def recording_forward(self, x):
        seen.append(tuple(x.shape))
        return forward(self, x)

    monkeypatch.setattr(ConvLSTMUNet, "forward", recording_forward)
    stores = [demo_stores / "Synth-Round.zarr", demo_stores / "Synth-Dense.zarr"]
    config = TrainConfig.model_validate({
        "data": {"stores": stores, "configuration": "all-st", "crop": 32, "batch_size": 2, "foreground_crop_p": 0.7,
                 "augment": {"rotation_p": 0.5, "elastic_p": 0.5, "noise_std": 0.02, "noise_kind": "gaussian"}},
        "model": {"name": "convlstm_unet", "options": {"width": 8, "stages": 4, "time_window": 3}},
        "optimizer": {"lr": 2e-3},
        "scheduler": {"name": "constant"},
        "training": {"epochs": 4, "steps_per_epoch": 5, "eval_every": 4},
    })
    losses: list[float] = []

    class Observer:
        def on_start(self, config, model_config): ...
        def on_evaluation(self, step, epoch, metrics, examples): ...
        def on_end(self, best): ...

        def on_steps(self, records):
            losses.extend(values["loss/total"] for _, values in records if "loss/total" in values)

    result = train(config, WorkerContext(progress_bar=lambda total, initial, desc: None), Observer())
    assert result.step == 20 and len(losses) == 20
    # Training batches and validation frames both reach the model as 3-frame windows.
    assert (2, 3, 1, 48, 48) in seen and (1, 3, 1, 128, 128) in seen and (1, 3, 1, 160, 160) in seen
    assert all(len(shape) == 5 and shape[1] == 3 for shape in seen)
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    assert {"seg/Synth-Round", "seg/Synth-Dense", "seg_mean"} <= result.last.keys()
