"""Training streams over real stores: crops, context padding, augmentation, shards and normalization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from celltune.data_prep.reader import SequenceReader
from celltune.trainables.config import AugmentConfig, DataConfig
from celltune.trainables.data import (
    RandomCrops,
    _flip_rotate,
    build_training_streams,
    dataset_frames,
    epoch_minibatches,
    load_validation_frames,
    normalize,
)


@pytest.fixture(scope="module")
def round_store(demo_stores):
    return demo_stores / "Synth-Round.zarr"


def _crops(store, **kwargs):
    frames = dataset_frames(store, "all-gt", "train")
    options = dict(crop=32, margin=8, target_kind="tertiary", weights=False, normalization="minmax",
                   augment=AugmentConfig(flips_and_rotations=False), seed=0)
    options.update(kwargs)
    return frames, RandomCrops(frames, **options)


def test_crop_with_context_matches_the_stored_frame_and_its_target(round_store):
    frames, crops = _crops(round_store)
    sample = crops.sample(np.random.default_rng(3))
    assert sample["image"].shape == (1, 48, 48) and sample["target"].shape == (48, 48)
    assert sample["image"].dtype == torch.float32 and sample["target"].dtype == torch.int64
    # Find the frame and window the sample came from: its centre 32x32 must be a verbatim crop.
    image, target = sample["image"][0].numpy(), sample["target"].numpy()
    found = False
    for frame in frames:
        reader = SequenceReader(frame.store, frame.sequence)
        raw = normalize(reader.frame("raw", frame.t), reader.stats, "minmax")
        tertiary = reader.frame("gt/tertiary", frame.t)
        for y in range(raw.shape[0] - 31):
            for x in range(raw.shape[1] - 31):
                if np.array_equal(raw[y:y + 32, x:x + 32], image[8:40, 8:40]):
                    assert np.array_equal(tertiary[y:y + 32, x:x + 32], target[8:40, 8:40])
                    found = True
                    break
            if found:
                break
        if found:
            break
    assert found, "the crop's centre is not a window of any training frame"


def test_augmentation_moves_image_and_target_together(round_store):
    _, crops = _crops(round_store, augment=AugmentConfig(flips_and_rotations=True))
    _, plain = _crops(round_store)
    for seed in range(12):
        a = crops.sample(np.random.default_rng(seed))
        b = plain.sample(np.random.default_rng(seed))
        variants = [_flip_rotate(b["image"].numpy(), i) for i in range(6)]
        index = next(i for i, v in enumerate(variants) if np.array_equal(v, a["image"].numpy()))
        assert np.array_equal(_flip_rotate(b["target"].numpy(), index), a["target"].numpy())


def test_small_frames_are_mirrored_up_to_the_crop(round_store):
    _, crops = _crops(round_store, crop=160, margin=16)  # frames are 128x128
    sample = crops.sample(np.random.default_rng(0))
    assert sample["image"].shape == (1, 192, 192)


def test_mask_marker_and_binary_targets_with_weights(round_store):
    _, crops = _crops(round_store, target_kind="mask_marker", weights=True)
    sample = crops.sample(np.random.default_rng(1))
    assert sample["target"].shape == (2, 48, 48) and sample["weight"].shape == (1, 48, 48)
    assert set(np.unique(sample["target"].numpy())) <= {0.0, 1.0}
    _, crops = _crops(round_store, target_kind="binary", weights=True)
    sample = crops.sample(np.random.default_rng(1))
    assert sample["target"].dtype == torch.int64 and sample["weight"].dtype == torch.float32


def test_ranks_get_disjoint_shards_and_equal_epoch_lengths(demo_stores):
    data = DataConfig(stores=[demo_stores / "Synth-Round.zarr", demo_stores / "Synth-Dense.zarr"],
                      configuration="all-st", crop=32, batch_size=2)
    common = dict(target_kind="tertiary", margin=8, size_multiple=16, world_size=2, seed=0, weights=False,
                  pooled=False)
    rank0 = build_training_streams(data, rank=0, **common)
    rank1 = build_training_streams(data, rank=1, **common)
    batch = rank0.next("Synth-Dense", torch.device("cpu"))
    assert batch["image"].shape == (2, 1, 48, 48)
    assert rank0.frames_per_dataset == rank1.frames_per_dataset
    assert epoch_minibatches(rank0.frames_per_dataset["Synth-Round"], 2, 2) == \
        epoch_minibatches(rank1.frames_per_dataset["Synth-Round"], 2, 2)
    frames = dataset_frames(data.stores[0], "all-st", "train")
    assert set(frames[0::2]).isdisjoint(frames[1::2])


def test_validation_frames_are_whole_and_normalized_like_training(demo_stores):
    data = DataConfig(stores=[demo_stores / "Synth-Round.zarr"], configuration="all-gt", normalization="percentile")
    (frames,) = load_validation_frames(data).values()
    assert frames and all(f.image.shape == f.raw.shape == f.labels.shape == (128, 128) for f in frames)
    assert all(0.0 <= f.image.min() and f.image.max() <= 1.0 for f in frames)
    assert all(f.labels.max() > 0 for f in frames)


def test_normalization_methods():
    stats = {"min": 10.0, "max": 110.0, "p1": 20.0, "p99": 60.0}
    image = np.array([10, 20, 60, 110], np.uint16)
    np.testing.assert_allclose(normalize(image, stats, "minmax"), [0.0, 0.1, 0.5, 1.0])
    np.testing.assert_allclose(normalize(image, stats, "percentile"), [0.0, 0.0, 1.0, 1.0])
    expected = np.log1p([0.0, 10.0, 50.0, 100.0]) / np.log1p(100.0)
    np.testing.assert_allclose(normalize(image, stats, "log"), expected, rtol=1e-6)
    # log lifts the dim end: a cell 2 above a background at min keeps 10x the share of the range minmax gives it
    dim = normalize(np.array([10, 12], np.uint16), stats, "log")
    assert dim[1] - dim[0] > 10 * 0.02
