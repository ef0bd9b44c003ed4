"""Whole-sequence prediction for models that see a time window of frames (``model.spec.time_window`` > 1).

Frame t is predicted from the window of frames t-T+1..t; before the sequence starts the first frame is repeated,
as in training. Each window is predicted on its own, so a frame's result does not depend on how the sequence is
cut into chunks: pass the frames just before a chunk as ``previous`` and it gives what the whole sequence gives.
Windows are reflection-padded to the size multiple and, when larger than ``max_tile``, cut into the same
overlapping, blended tiles as :func:`celltune.trainables.inference.predict_probabilities` (the same tile plan,
every frame of a window cropped alike).
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from celltune.data_prep.errors import UserInputError
from celltune.trainables.inference import (
    Activation,
    _activate,
    _axis_plan,
    _check_output,
    _pad_amounts,
    _positive_int,
    resolve_amp,
    resolve_device,
)

logger = logging.getLogger(__name__)


def sequence_windows(frames: np.ndarray, time_window: int, previous: np.ndarray | None = None) -> np.ndarray:
    """The window of every frame: ``(N, T, H, W)``, frame n's window ending at ``frames[n]`` (a view, no copy
    of the frames beyond joining them with ``previous``).

    Args:
        frames: ``(N, H, W)`` consecutive frames.
        time_window: T.
        previous: ``(P, H, W)`` frames just before ``frames[0]`` in the sequence (the last T - 1 are used). Fewer
            than T - 1 means the sequence starts with them; None or empty means it starts at ``frames[0]``. The
            sequence's first frame is repeated to fill windows reaching before its start.

    Raises:
        UserInputError: bad shapes or ``time_window``.
    """
    time_window = _positive_int("time_window", time_window)
    if not isinstance(frames, np.ndarray) or frames.ndim != 3 or frames.shape[0] == 0:
        raise UserInputError(f"frames: expected a non-empty (N, H, W) array, got {getattr(frames, 'shape', frames)}")
    parts = [frames]
    if previous is not None and len(previous):
        if previous.ndim != 3 or previous.shape[1:] != frames.shape[1:]:
            raise UserInputError(f"previous frames of shape {previous.shape} do not match frames {frames.shape}")
        parts.insert(0, previous[-(time_window - 1):] if time_window > 1 else previous[:0])
    sequence = np.concatenate(parts) if len(parts) > 1 else frames
    missing = frames.shape[0] + time_window - 1 - sequence.shape[0]
    if missing > 0:
        sequence = np.concatenate([np.repeat(sequence[:1], missing, axis=0), sequence])
    windows = np.lib.stride_tricks.sliding_window_view(sequence, time_window, axis=0)  # (N, H, W, T)
    return np.moveaxis(windows, -1, 1)


def predict_sequence_probabilities(model: nn.Module, frames: np.ndarray, *, time_window: int,
                                   previous: np.ndarray | None = None, **kwargs) -> np.ndarray:
    """Class probabilities of every frame of a sequence (or a chunk of it) from its sliding window.

    Args:
        model: maps ``(B, T, 1, h, w)`` windows to logits ``(B, C, h, w)`` of their last frame.
        frames: ``(N, H, W)`` normalized consecutive frames.
        time_window: frames per window (``model.spec.time_window``).
        previous: the frames before ``frames[0]``, when predicting a sequence chunk by chunk (see
            :func:`sequence_windows`).
        **kwargs: as for :func:`predict_window_probabilities` (``size_multiple``, ``activation``, ``device``, ...).

    Returns:
        ``(N, C, H, W)`` float32 probabilities.
    """
    # float32 before windowing: the windows are a view, a later dtype change would copy T times the frames.
    frames = _as_float32("frames", frames)
    previous = None if previous is None else _as_float32("previous", previous)
    return predict_window_probabilities(model, sequence_windows(frames, time_window, previous), **kwargs)


def predict_window_probabilities(
    model: nn.Module,
    windows: np.ndarray,
    *,
    size_multiple: int,
    activation: Activation,
    device: str | torch.device = "cpu",
    amp: bool | None = None,
    batch_size: int = 4,
    max_tile: int | None = 1024,
    tile_overlap: int = 64,
    show_progress: bool = False,
) -> np.ndarray:
    """Class probabilities of the last frame of every window.

    The model runs in eval mode under ``torch.inference_mode`` (its training flag is restored) on ``(b, T, 1, h, w)``
    float32 tiles whose sides are multiples of ``size_multiple``; tile logits are blended on the CPU in float32.

    Args:
        model: maps ``(B, T, 1, h, w)`` to logits ``(B, C, h, w)``.
        windows: ``(N, T, H, W)`` normalized frames (or one ``(T, H, W)`` window).
        size_multiple, activation, device, amp, batch_size, max_tile, tile_overlap, show_progress: as for
            :func:`celltune.trainables.inference.predict_probabilities`; ``batch_size`` counts windows (or tiles).

    Returns:
        ``(N, C, H, W)`` float32 probabilities.

    Raises:
        UserInputError: bad windows, options or device, or a model whose output does not fit its input.
    """
    windows = _check_windows(windows)
    multiple = _positive_int("size_multiple", size_multiple)
    batch_size = _positive_int("batch_size", batch_size)
    if activation not in ("softmax", "sigmoid"):
        raise UserInputError(f"activation={activation!r}: expected 'softmax' or 'sigmoid'")
    if isinstance(tile_overlap, bool) or not isinstance(tile_overlap, int) or tile_overlap < 0:
        raise UserInputError(f"tile_overlap={tile_overlap!r}: must be a non-negative integer")
    overlap = math.ceil(tile_overlap / multiple) * multiple
    tile = None
    if max_tile is not None:
        tile = (_positive_int("max_tile", max_tile) // multiple) * multiple
        if tile == 0 or 2 * overlap > tile:
            raise UserInputError(f"max_tile={max_tile}: the tile (rounded down to a multiple of {multiple}: {tile} px)"
                                 f" must be at least twice tile_overlap={tile_overlap} (rounded up to {overlap})")
    target = resolve_device(device)
    amp_dtype = resolve_amp(target, amp)

    count, steps, height, width = windows.shape
    pad_y, pad_x = _pad_amounts(height, multiple), _pad_amounts(width, multiple)
    padded_shape = (height + sum(pad_y), width + sum(pad_x))
    starts_y, windows_y = _axis_plan(padded_shape[0], tile, overlap)
    starts_x, windows_x = _axis_plan(padded_shape[1], tile, overlap)
    tile_h, tile_w = windows_y[0].size, windows_x[0].size
    blend = {(iy, ix): np.outer(wy, wx).astype(np.float32)
             for iy, wy in enumerate(windows_y) for ix, wx in enumerate(windows_x)}
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    for (iy, ix), weights in blend.items():
        weight_sum[starts_y[iy]:starts_y[iy] + tile_h, starts_x[ix]:starts_x[ix] + tile_w] += weights
    crop = (slice(pad_y[0], pad_y[0] + height), slice(pad_x[0], pad_x[0] + width))
    weight_sum = weight_sum[crop]
    tiles = list(blend)
    # Pad a few windows at a time: padding the whole (N, T, H, W) stack at once could hold gigabytes.
    group = max(1, batch_size // len(tiles))
    logger.debug("predicting %d window(s) of %d frame(s) as %d tile(s) of %dx%d each", count, steps, len(tiles),
                 tile_h, tile_w)

    result: np.ndarray | None = None
    autocast = torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    was_training = model.training
    model.to(target).eval()
    try:
        with torch.inference_mode(), autocast, tqdm(total=count * len(tiles), unit="tile",
                                                    disable=None if show_progress else True) as bar:
            for first in range(0, count, group):
                chunk = np.pad(windows[first:first + group], ((0, 0), (0, 0), pad_y, pad_x), mode="reflect")
                if not np.isfinite(chunk).all():
                    raise UserInputError("windows: contain NaN or infinite values")
                jobs = [(n, iy, ix) for n in range(chunk.shape[0]) for iy, ix in tiles]
                acc: np.ndarray | None = None
                for start in range(0, len(jobs), batch_size):
                    batch = jobs[start:start + batch_size]
                    stack = np.stack([chunk[n, :, starts_y[iy]:starts_y[iy] + tile_h,
                                            starts_x[ix]:starts_x[ix] + tile_w] for n, iy, ix in batch])
                    inputs = torch.from_numpy(stack).unsqueeze(2).to(target)
                    logits = _check_output(model(inputs), inputs[:, -1].shape).float().cpu().numpy()
                    if acc is None:
                        acc = np.zeros((chunk.shape[0], logits.shape[1], *padded_shape), np.float32)
                    for (n, iy, ix), tile_logits in zip(batch, logits, strict=True):
                        y0, x0 = starts_y[iy], starts_x[ix]
                        acc[n, :, y0:y0 + tile_h, x0:x0 + tile_w] += tile_logits * blend[(iy, ix)]
                    bar.update(len(batch))
                if acc is None:
                    raise RuntimeError("internal error: a group of windows got no tiles")
                if result is None:
                    result = np.empty((count, acc.shape[1], height, width), dtype=np.float32)
                for n in range(chunk.shape[0]):
                    result[first + n] = _activate(acc[(n, slice(None), *crop)] / weight_sum, activation)
    finally:
        model.train(was_training)
    if result is None:
        raise RuntimeError("internal error: no window was predicted")
    return result


def _as_float32(name: str, array: np.ndarray) -> np.ndarray:
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise UserInputError(f"{name}: expected float32 intensities already normalized, got "
                             f"{getattr(array, 'dtype', type(array).__name__)}")
    return array.astype(np.float32, copy=False)


def _check_windows(windows: np.ndarray) -> np.ndarray:
    """(N, T, H, W) float32 windows, or a one-line error."""
    if not isinstance(windows, np.ndarray):
        raise UserInputError(f"windows: expected a numpy array, got {type(windows).__name__}")
    if windows.ndim == 3:
        windows = windows[None]
    if windows.ndim != 4 or windows.size == 0:
        raise UserInputError(f"windows: expected a non-empty (N, T, H, W) or (T, H, W) array, got {windows.shape}")
    if not np.issubdtype(windows.dtype, np.floating):
        raise UserInputError(f"windows: dtype {windows.dtype}; expected float32 intensities already normalized")
    if windows.dtype != np.float32:
        windows = windows.astype(np.float32)
    return windows
