"""Rotation by any angle, elastic deformation and noise: geometry, image/label alignment, label values, seeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from celltune.data_prep.common import UserInputError
from celltune.trainables.augment import (
    add_noise,
    apply_warp,
    elastic_displacement,
    identity_coords,
    make_warp,
    rotation_coords,
    sample_warp,
)
from celltune.trainables.config import AugmentConfig
from celltune.trainables.data import RandomCrops, dataset_frames

WARPS = {
    "rotation": dict(rotation_p=1.0),
    "elastic": dict(elastic_p=1.0, elastic_alpha=300.0, elastic_sigma=8.0),
    "both": dict(rotation_p=1.0, elastic_p=1.0, elastic_alpha=300.0, elastic_sigma=8.0),
}


def _blobs(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image and its instance labels: the connected components of image > 0.5."""
    noise = np.random.default_rng(seed).random((size, size))
    smooth = ndimage.gaussian_filter(noise, 6, mode="reflect")
    centred = smooth - np.median(smooth)
    image = 0.5 + centred / (2 * np.abs(centred).max())  # in [0, 1], half of it above 0.5
    labels, _ = ndimage.label(image > 0.5)
    return image.astype(np.float32), labels.astype(np.uint16)


def test_quarter_turn_is_np_rot90_and_needs_no_border():
    array = np.arange(36).reshape(6, 6)
    warp = make_warp(rotation_coords(6, 90.0))
    assert warp.border == 0
    np.testing.assert_array_equal(apply_warp(array, warp, order=0), np.rot90(array, 1))
    np.testing.assert_array_equal(apply_warp(array, make_warp(rotation_coords(6, -90.0)), order=0),
                                  np.rot90(array, -1))


def test_rotation_by_any_angle_matches_scipy_rotate_and_reads_real_context():
    image, _ = _blobs(80, seed=0)
    warp = make_warp(rotation_coords(40, 33.0))
    # A 40 px square turned by 33 degrees reaches 19.5 * (cos 33 + sin 33 - 1) = 7.5 px beyond its pixel centres.
    assert warp.border == 8
    source = image[20 - 8:60 + 8, 20 - 8:60 + 8]
    expected = ndimage.rotate(image, 33.0, reshape=False, order=1)[20:60, 20:60]
    np.testing.assert_allclose(apply_warp(source, warp, order=1), expected, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(WARPS))
def test_warp_keeps_labels_on_the_image_and_creates_no_label_values(kind):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        warp = sample_warp(rng, 96, **WARPS[kind])
        image, labels = _blobs(warp.source_size, seed=10 + seed)
        warped_image = apply_warp(image[None], warp, order=1)[0]
        warped_labels = apply_warp(labels, warp, order=0)
        assert warped_labels.dtype == labels.dtype
        assert set(np.unique(warped_labels)) <= set(np.unique(labels))
        fg = warped_labels > 0
        # Labels are the thresholded image before the warp, so they stay the thresholded image after it, except
        # where linear and nearest interpolation disagree: where the nearest source pixel has a neighbour on the
        # other side of a cell border.
        differ = fg != (warped_image > 0.5)
        square = np.ones((3, 3), bool)
        source_fg = labels > 0
        source_border = ndimage.binary_dilation(source_fg, square) & ~ndimage.binary_erosion(source_fg, square)
        assert not (differ & ~apply_warp(source_border, warp, order=0)).any()
        assert differ.mean() < 0.02
        assert 0.1 < fg.mean() < 0.9 and not np.array_equal(warped_labels, labels[:96, :96])


def test_elastic_field_follows_alpha_and_sigma():
    field = elastic_displacement(np.random.default_rng(0), 128, alpha=1.0, sigma=8.0)
    # Gaussian-smoothed white noise of variance 1/3 has std ~ sqrt(1/3) / (2 sqrt(pi) sigma) = 0.0204.
    assert field.shape == (2, 128, 128) and field.std() == pytest.approx(0.0204, rel=0.25)
    scaled = elastic_displacement(np.random.default_rng(0), 128, alpha=300.0, sigma=8.0)
    np.testing.assert_allclose(scaled, 300.0 * field)
    rougher = elastic_displacement(np.random.default_rng(0), 128, alpha=1.0, sigma=2.0)
    assert rougher.std() > 3 * field.std()
    with pytest.raises(UserInputError, match="sigma=0"):
        elastic_displacement(np.random.default_rng(0), 8, alpha=1.0, sigma=0.0)


def test_warps_are_deterministic_per_seed():
    first = sample_warp(np.random.default_rng(5), 64, **WARPS["both"])
    again = sample_warp(np.random.default_rng(5), 64, **WARPS["both"])
    other = sample_warp(np.random.default_rng(6), 64, **WARPS["both"])
    np.testing.assert_array_equal(first.coords, again.coords)
    assert first.border == again.border
    assert not np.allclose(first.coords, other.coords)


def test_switched_off_warps_draw_nothing_and_probabilities_are_honoured():
    rng = np.random.default_rng(1)
    assert sample_warp(rng, 64) is None
    assert rng.random() == np.random.default_rng(1).random()
    rng = np.random.default_rng(2)
    drawn = [sample_warp(rng, 16, rotation_p=0.3) is not None for _ in range(400)]
    assert 0.22 < np.mean(drawn) < 0.38
    assert np.array_equal(make_warp(identity_coords(8)).coords, identity_coords(8))


def test_noise_kinds():
    image = np.zeros((200, 200), np.float32)
    half = add_noise(image, np.random.default_rng(0), 0.1, "half_normal")
    full = add_noise(image, np.random.default_rng(0), 0.1, "gaussian")
    assert half.dtype == full.dtype == np.float32
    assert half.min() >= 0 and half.mean() == pytest.approx(0.1 * np.sqrt(2 / np.pi), rel=0.05)
    assert full.min() < 0 and abs(full.mean()) < 0.005 and full.std() == pytest.approx(0.1, rel=0.05)
    np.testing.assert_allclose(np.abs(full), half)
    with pytest.raises(UserInputError, match="noise_kind='pink'"):
        add_noise(image, np.random.default_rng(0), 0.1, "pink")


def _demo_crops(demo_stores, augment: AugmentConfig, **kwargs) -> RandomCrops:
    frames = dataset_frames(demo_stores / "Synth-Round.zarr", "all-gt", "train")
    options = dict(crop=32, margin=8, target_kind="tertiary", weights=False, normalization="minmax",
                   augment=augment, seed=0)
    return RandomCrops(frames, **{**options, **kwargs})


def test_loader_crops_with_every_augmentation_are_reproducible_and_keep_target_classes(demo_stores):
    augment = AugmentConfig(rotation_p=1.0, elastic_p=1.0, noise_std=0.05, noise_kind="gaussian",
                            intensity_jitter=0.1)
    crops = _demo_crops(demo_stores, augment)
    plain = _demo_crops(demo_stores, AugmentConfig(flips_and_rotations=False))
    for seed in range(4):
        sample = crops.sample(np.random.default_rng(seed))
        again = crops.sample(np.random.default_rng(seed))
        for name in sample:
            assert np.array_equal(sample[name].numpy(), again[name].numpy())
        assert sample["image"].shape == (1, 48, 48) and sample["target"].shape == (48, 48)
        assert set(np.unique(sample["target"].numpy())) <= {0, 1, 2}
        assert not np.array_equal(sample["image"].numpy(), plain.sample(np.random.default_rng(seed))["image"].numpy())


def test_defaults_leave_the_old_crops_unchanged(demo_stores):
    # The new options default to off: a stream with them explicitly off yields what the defaults yield, and
    # the default noise (|N(0, s)|, always drawn) is the one earlier runs used.
    old = AugmentConfig(noise_std=0.05)
    explicit = AugmentConfig(noise_std=0.05, noise_kind="half_normal", noise_p=1.0, rotation_p=0.0, elastic_p=0.0)
    first, second = _demo_crops(demo_stores, old), _demo_crops(demo_stores, explicit, foreground_p=0.0)
    noiseless = _demo_crops(demo_stores, AugmentConfig())
    for seed in range(3):
        a, b = first.sample(np.random.default_rng(seed)), second.sample(np.random.default_rng(seed))
        assert all(np.array_equal(a[name].numpy(), b[name].numpy()) for name in a)
        c = noiseless.sample(np.random.default_rng(seed))
        assert (a["image"].numpy() >= c["image"].numpy()).all()  # same crop, plus non-negative noise
