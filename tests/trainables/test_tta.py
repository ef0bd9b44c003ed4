"""Test-time augmentation: exact for a network that cannot tell orientations apart, the mean of the eight
oriented predictions otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from celltune.trainables.inference import predict_probabilities
from celltune.trainables.tta import DIHEDRAL, transform, untransform, with_tta


def _predict(model: nn.Module):
    return lambda frames: predict_probabilities(model, frames, size_multiple=1, activation="softmax", max_tile=None)


def test_the_eight_transforms_are_distinct_and_each_is_undone():
    image = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    seen = set()
    for turns, flip in DIHEDRAL:
        moved = transform(image, turns, flip)
        seen.add(moved.tobytes() + bytes(moved.shape))
        assert np.array_equal(untransform(moved, turns, flip), image)
    assert len(DIHEDRAL) == len(seen) == 8


def test_tta_of_an_orientation_blind_network_is_its_plain_prediction():
    torch.manual_seed(0)
    pointwise = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1))  # sees one pixel at a time
    images = np.random.default_rng(0).random((2, 20, 28), dtype=np.float32)
    plain = _predict(pointwise)(images)
    assert np.allclose(with_tta(_predict(pointwise), images), plain, atol=1e-6)


def test_tta_is_the_mean_of_the_oriented_predictions_mapped_back():
    torch.manual_seed(1)
    sided = nn.Conv2d(1, 3, 3, padding=1)  # a 3x3 kernel does tell orientations apart
    images = np.random.default_rng(1).random((1, 16, 24), dtype=np.float32)
    predict = _predict(sided)
    expected = np.mean([untransform(predict(np.ascontiguousarray(transform(images, k, f))), k, f)
                        for k, f in DIHEDRAL], axis=0)
    averaged = with_tta(predict, images)
    assert averaged.shape == (1, 3, 16, 24)
    assert np.allclose(averaged, expected, atol=1e-6)
    assert not np.allclose(averaged, predict(images), atol=1e-3)  # so the average did something
    assert np.allclose(averaged.sum(axis=1), 1.0, atol=1e-5)  # still probabilities


@pytest.mark.parametrize("shape", [(9, 13), (16, 16)])
def test_odd_and_square_frames_keep_their_shape(shape):
    model = nn.Conv2d(1, 2, 1)
    images = np.zeros((1, *shape), dtype=np.float32)
    assert with_tta(_predict(model), images).shape == (1, 2, *shape)
