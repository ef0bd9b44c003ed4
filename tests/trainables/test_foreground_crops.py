"""Crop placement (uniform or centred on annotated cells) and loader-level warps, on tiny hand-made stores.

The stores here are written with the real shard writer and read by the real SequenceReader: images are a
constant background plus a constant cell intensity, so the cell mask is the thresholded image and any
misalignment between image and targets shows exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

from celltune.data_prep import shards
from celltune.data_prep import store_format as sf
from celltune.data_prep.reader import SequenceReader
from celltune.trainables.config import AugmentConfig
from celltune.trainables.data import FrameRef, RandomCrops, normalize

BACKGROUND, CELL = 50, 150


def _write_store(path: Path, labels: np.ndarray, raw: np.ndarray | None = None) -> list[FrameRef]:
    """A one-sequence store holding ``labels`` (T, [Z,] Y, X) as GT with its mask target; one FrameRef per frame
    (per slice in 3D)."""
    if raw is None:
        raw = np.where(labels > 0, CELL, BACKGROUND).astype(np.uint8)
    frames, *frame_shape = labels.shape
    zarr.create_group(zarr.storage.LocalStore(path),
                      attributes={sf.ATTRS_KEY: {"kind": sf.STORE_KIND, "complete": True, "dataset": "Tiny"}})
    attrs = {"sequence": "01", "ndim": len(frame_shape), "num_frames": frames, "frame_shape": frame_shape,
             "stats": {"min": float(raw.min()), "max": float(raw.max()), "p1": float(raw.min()),
                       "p99": float(raw.max())},
             "annotations": {"gt_seg": {"frames": list(range(frames))}}}
    zarr.create_group(zarr.storage.LocalStore(path), path="01", attributes={sf.ATTRS_KEY: attrs})
    arrays = {"raw": (raw, shards.RAW_CODEC), "gt_seg": (labels.astype(np.uint16), shards.LABEL_CODEC),
              "gt/mask": ((labels > 0).astype(np.uint8), shards.LABEL_CODEC),
              "gt/marker": ((labels > 0).astype(np.uint8), shards.LABEL_CODEC)}
    for name, (data, role) in arrays.items():
        array_dir = shards.create_frame_array(path, f"01/{sf.array_path(name)}", tuple(frame_shape), frames,
                                              data.dtype, role)
        writer = shards.ShardWriter(array_dir)
        for t in range(frames):
            writer.write_frame(t, data[t])
    if len(frame_shape) == 2:
        return [FrameRef("Tiny", str(path), "01", t, None, "gt") for t in range(frames)]
    return [FrameRef("Tiny", str(path), "01", t, z, "gt") for t in range(frames) for z in range(frame_shape[0])]


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float, label: int = 1) -> np.ndarray:
    yy, xx = np.indices(shape)
    return np.where((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2, label, 0)


def _crops(frames: list[FrameRef], **kwargs) -> RandomCrops:
    options = dict(crop=32, margin=8, target_kind="mask_marker", weights=False, normalization="minmax",
                   augment=AugmentConfig(flips_and_rotations=False), seed=0)
    return RandomCrops(frames, **{**options, **kwargs})


@pytest.fixture(scope="module")
def sparse_frames(tmp_path_factory) -> list[FrameRef]:
    """Four 192x192 frames, each with one small cell somewhere else (under 1% of the frame is foreground)."""
    centres = [(20, 30), (170, 170), (96, 10), (60, 140)]
    labels = np.stack([_disc((192, 192), c, 6) for c in centres])
    return _write_store(tmp_path_factory.mktemp("sparse") / "Tiny.zarr", labels)


def _loss_region_has_foreground(sample, margin: int = 8) -> bool:
    return bool(sample["target"][0, margin:-margin, margin:-margin].any())


def test_foreground_crops_always_hold_a_cell_and_uniform_crops_mostly_do_not(sparse_frames):
    always = _crops(sparse_frames, foreground_p=1.0)
    never = _crops(sparse_frames, foreground_p=0.0)
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    with_cells = [_loss_region_has_foreground(always.sample(rng_a)) for _ in range(60)]
    uniform = [_loss_region_has_foreground(never.sample(rng_b)) for _ in range(60)]
    assert all(with_cells)
    # A 32x32 crop meets a 13 px disc in a 192x192 frame with probability about (32 + 12)^2 / 160^2 = 0.08.
    assert np.mean(uniform) < 0.3


def test_foreground_crops_are_centred_on_the_cell_when_the_frame_allows(sparse_frames):
    crops = _crops(sparse_frames[3:], foreground_p=1.0)  # the cell at (60, 140), far from the frame's sides
    rng = np.random.default_rng(1)
    for _ in range(10):
        target = crops.sample(rng)["target"][0, 8:-8, 8:-8].numpy()
        ys, xs = np.nonzero(target)
        # The crop is centred on a pixel of the 13 px wide cell, so the cell covers the crop centre's region.
        assert abs(ys.mean() - 15.5) <= 7 and abs(xs.mean() - 15.5) <= 7


def test_half_the_crops_are_foreground_crops_at_p_one_half(sparse_frames):
    crops = _crops(sparse_frames, foreground_p=0.5)
    rng = np.random.default_rng(2)
    share = np.mean([_loss_region_has_foreground(crops.sample(rng)) for _ in range(200)])
    assert 0.4 < share < 0.65  # 0.5 + 0.5 * ~0.08


def test_p_zero_places_crops_exactly_as_before(sparse_frames):
    crops = _crops(sparse_frames, foreground_p=0.0)
    reader = SequenceReader(sparse_frames[0].store, "01")
    for seed in range(8):
        sample = crops.sample(np.random.default_rng(seed))
        # The draws of the uniform sampler: frame, then the top-left corner of the loss region.
        rng = np.random.default_rng(seed)
        frame = sparse_frames[int(rng.integers(len(sparse_frames)))]
        y0, x0 = int(rng.integers(0, 192 - 32 + 1)), int(rng.integers(0, 192 - 32 + 1))
        expected = normalize(reader.crop("raw", frame.t, y0, x0, 32, 32), reader.stats, "minmax")
        np.testing.assert_array_equal(sample["image"][0, 8:40, 8:40].numpy(), expected)


def test_frames_without_cells_fall_back_to_uniform_crops(tmp_path):
    labels = np.zeros((1, 96, 96), np.uint16)
    frames = _write_store(tmp_path / "Tiny.zarr", labels, raw=np.full((1, 96, 96), 7, np.uint8))
    crops = _crops(frames, foreground_p=1.0)
    rng = np.random.default_rng(0)
    assert all(crops.sample(rng)["image"].shape == (1, 48, 48) for _ in range(5))


def test_foreground_crops_on_3d_slices_use_the_slice_labels(tmp_path):
    volume = np.zeros((1, 3, 128, 128), np.uint16)
    volume[0, 1] = _disc((128, 128), (100, 20), 5)
    frames = _write_store(tmp_path / "Tiny.zarr", volume)
    crops = _crops([f for f in frames if f.z == 1], foreground_p=1.0)
    rng = np.random.default_rng(0)
    assert all(_loss_region_has_foreground(crops.sample(rng)) for _ in range(10))


@pytest.fixture(scope="module")
def moving_cells(tmp_path_factory) -> list[FrameRef]:
    """Three 96x96 frames with the same cells at per-frame intensities (so each frame of a window thresholds to
    the same mask) and touching labels 1 and 2."""
    cells = _disc((96, 96), (40, 40), 14, 1) + _disc((96, 96), (40, 66), 12, 2) + _disc((96, 96), (75, 30), 9, 3)
    labels = np.stack([cells] * 3).astype(np.uint16)
    raw = np.stack([np.where(cells > 0, CELL + 30 * t, BACKGROUND) for t in range(3)]).astype(np.uint8)
    return _write_store(tmp_path_factory.mktemp("cells") / "Tiny.zarr", labels, raw)


@pytest.mark.parametrize("augment", [
    AugmentConfig(rotation_p=1.0),
    AugmentConfig(elastic_p=1.0, elastic_alpha=300.0, elastic_sigma=8.0),
    AugmentConfig(rotation_p=1.0, elastic_p=1.0, elastic_alpha=300.0, elastic_sigma=8.0, flips_and_rotations=True),
])
def test_loader_warps_every_window_frame_and_the_targets_alike(moving_cells, augment):
    crops = _crops(moving_cells[2:], augment=augment, time_window=3, crop=48, weights=True, foreground_p=1.0)
    levels = [(CELL + 30 * t - BACKGROUND) / (CELL + 60 - BACKGROUND) for t in range(3)]  # normalized cell levels
    for seed in range(4):
        sample = crops.sample(np.random.default_rng(seed))
        image, mask = sample["image"].numpy(), sample["target"][0].numpy() > 0
        assert image.shape == (3, 1, 64, 64) and sample["weight"].shape == (1, 64, 64)
        masks = [image[t, 0] > levels[t] / 2 for t in range(3)]  # each frame thresholded halfway
        assert all(np.array_equal(m, masks[-1]) for m in masks)  # one crop and one warp for the whole window
        differ = masks[-1] != mask
        border = ndimage.binary_dilation(mask, np.ones((3, 3), bool)) & ~ndimage.binary_erosion(mask)
        assert differ.mean() < 0.03 and not (differ & ~ndimage.binary_dilation(border)).any()
        assert 0.05 < mask.mean() < 0.95
        assert np.isfinite(sample["weight"].numpy()).all()
