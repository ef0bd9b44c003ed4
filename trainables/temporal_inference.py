"""Whole-sequence prediction for models that see a time window of frames (``model.spec.time_window`` > 1).

Frame t is predicted from the window of frames t-T+1..t; before the sequence starts the first frame is repeated,
as in training. Each window is predicted on its own, so a frame's result does not depend on how the sequence is
cut into chunks: pass the frames just before a chunk as ``previous`` and it gives what the whole sequence gives.
Windows go through the sliding-window engine of :func:`celltune.trainables.inference.predict_probabilities`
(the same tile plan, every frame of a window cropped alike). :func:`predict_frame_probabilities` picks the
window or the frame predictor from the model, for every caller that handles both kinds.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from celltune.data_prep.common import UserInputError
from celltune.trainables.inference import Activation, _positive_int, _predict_tiled, predict_probabilities
from celltune.trainables.tta import DIHEDRAL, with_tta


def time_window_of(model: nn.Module) -> int:
    """Frames per input window: ``model.spec.time_window`` of a temporal model, 1 for a frame model (or none)."""
    return int(getattr(getattr(model, "spec", None), "time_window", 1) or 1)


def predict_frame_probabilities(model: nn.Module, frames: np.ndarray, *, previous: np.ndarray | None = None,
                                scale: float = 1.0, tta: bool = False, **kwargs) -> np.ndarray:
    """Class probabilities of frames, each from its time window for a temporal model, else on its own.

    One place decides which predictor a model needs, so validation, the post-processing study and
    ``celltune predict`` predict alike: a model with :func:`time_window_of` > 1 goes through
    :func:`predict_sequence_probabilities` (windows built from ``previous`` and ``frames``), any other through
    :func:`celltune.trainables.inference.predict_probabilities`.

    Args:
        model: a frame model (``(B, 1, h, w)`` input) or a temporal one (``(B, T, 1, h, w)``, ``spec.time_window``).
        frames: ``(H, W)`` or ``(N, H, W)`` normalized consecutive frames; for a frame model also the ``(Z, H, W)``
            slices of a volume.
        previous: ``(P, H, W)`` frames just before ``frames[0]`` (see :func:`sequence_windows`), e.g. the first
            T - 1 frames of a validation window; only temporal models read them. Default None.
        scale: resampling factor the model was trained at (``data.scale``); temporal models only at 1.0.
        tta: average over the eight flips and rotations (:mod:`celltune.trainables.tta`); frame models only.
        **kwargs: ``size_multiple``, ``activation``, ``device``, ``amp``, ``batch_size``, ``max_tile``,
            ``tile_overlap``, ``show_progress`` as for :func:`celltune.trainables.inference.predict_probabilities`.

    Returns:
        ``(N, C, H, W)`` float32 probabilities (N = 1 for an ``(H, W)`` frame).

    Raises:
        UserInputError: bad frames or options; ``scale`` other than 1 or ``tta`` for a temporal model.
    """
    time_window = time_window_of(model)
    if time_window == 1:
        predict = functools.partial(predict_probabilities, model, scale=scale, **kwargs)
        return with_tta(predict, frames, DIHEDRAL) if tta else predict(frames)
    if scale != 1.0:
        raise UserInputError(f"scale={scale!r}: the model sees windows of {time_window} frames; it is trained and "
                             "predicted at scale 1.0 only")
    if tta:
        raise UserInputError(f"tta: averages single frames; the model sees windows of {time_window} frames")
    if isinstance(frames, np.ndarray) and frames.ndim == 2:
        frames = frames[None]
    return predict_sequence_probabilities(model, frames, time_window=time_window, previous=previous, **kwargs)


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


def predict_window_probabilities(model: nn.Module, windows: np.ndarray, *, size_multiple: int,
                                 activation: Activation, device: str | torch.device = "cpu", amp: bool | None = None,
                                 batch_size: int = 4, max_tile: int | None = 1024, tile_overlap: int = 64,
                                 show_progress: bool = False) -> np.ndarray:
    """Class probabilities of the last frame of every window.

    The model runs in eval mode under ``torch.inference_mode`` (its training flag is restored) on ``(b, T, 1, h, w)``
    float32 tiles whose sides are multiples of ``size_multiple``; tile logits are blended on the CPU in float32.
    A model with ``output_crop`` > 0 (valid convolutions) is overlap-tiled, as the frame predictor does.

    Args:
        model: maps ``(B, T, 1, h, w)`` to logits ``(B, C, h, w)`` (each side ``2 * output_crop`` smaller for a
            valid-convolution model).
        windows: ``(N, T, H, W)`` normalized frames (or one ``(T, H, W)`` window).
        size_multiple, activation, device, amp, batch_size, max_tile, tile_overlap, show_progress: as for
            :func:`celltune.trainables.inference.predict_probabilities`; ``batch_size`` counts windows (or tiles).

    Returns:
        ``(N, C, H, W)`` float32 probabilities.

    Raises:
        UserInputError: bad windows, options or device, or a model whose output does not fit its input.
    """
    return _predict_tiled(model, _check_windows(windows), time_axis=True, size_multiple=size_multiple,
                          activation=activation, device=device, amp=amp, batch_size=batch_size, max_tile=max_tile,
                          tile_overlap=tile_overlap, show_progress=show_progress)


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
