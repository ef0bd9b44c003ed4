"""Tile plans for sliding-window inference: how a frame is padded, cut into tiles and put back together.

Same-padding models: frames are reflection-padded to the model's size multiple; frames larger than ``max_tile`` are
cut into overlapping tiles whose logits are blended with a window that is zero next to inner tile edges (where a
tile lacks context) and ramps up smoothly (cosine) across the overlap. Tiles start on multiples of the size
multiple, so strided/pooled models see the same grid as on the whole image; a model whose receptive-field radius is
at most ``tile_overlap // 4`` therefore gives the same result tiled and untiled.

Models with unpadded ("valid") convolutions, whose output is ``output_crop`` pixels smaller per side (the original
U-Net), use overlap-tile (Ronneberger et al., MICCAI 2015): the frame is mirror-extended, tiles overlap by the
context the model consumes, and their outputs are put side by side, each output pixel taken from exactly one tile.
Tiles start on multiples of the size multiple, so the result equals one pass over the whole mirror-extended frame.

Geometry only (numpy, no model): :func:`celltune.trainables.inference.predict_probabilities` and
:func:`celltune.trainables.temporal_inference.predict_window_probabilities` run their models over these plans,
every frame of a time window cut alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from celltune.data_prep.common import UserInputError


@dataclass(frozen=True)
class AxisPlan:
    """How one image axis is padded, cut into tiles and put back together.

    Tile i reads the padded input at ``[starts[i], starts[i] + tile)`` and its output (``tile - 2 * output_crop``
    long, weighted by ``windows[i]``) lands at ``[starts[i], ...)`` of the output canvas, where the frame is
    ``crop``.
    """

    pad: tuple[int, int]
    starts: list[int]
    tile: int
    windows: list[np.ndarray]
    canvas: int
    crop: slice


@dataclass(frozen=True)
class TilePlan:
    """Both axes' plans of one frame size; every frame (and every frame of a time window) is cut alike.

    ``shrink`` is the model's ``output_crop`` (0 for same padding); ``pad_mode`` the numpy mode that extends frames.
    """

    y: AxisPlan
    x: AxisPlan
    shrink: int
    pad_mode: str

    @property
    def starts(self) -> list[tuple[int, int]]:
        """Every tile's top-left corner in the padded frame and in the output canvas, row by row."""
        return [(y0, x0) for y0 in self.y.starts for x0 in self.x.starts]

    @property
    def canvas(self) -> tuple[int, int]:
        return self.y.canvas, self.x.canvas

    @property
    def crop(self) -> tuple[slice, slice]:
        """Where the frame lies on the output canvas."""
        return self.y.crop, self.x.crop

    def pad(self, array: np.ndarray) -> np.ndarray:
        """``array`` extended on its last two axes (any leading axes, e.g. a window's frames, padded alike)."""
        return np.pad(array, ((0, 0),) * (array.ndim - 2) + (self.y.pad, self.x.pad), mode=self.pad_mode)

    def source(self, y0: int, x0: int) -> tuple[slice, slice]:
        """The input of the tile at (y0, x0) in the padded frame."""
        return slice(y0, y0 + self.y.tile), slice(x0, x0 + self.x.tile)

    def target(self, y0: int, x0: int) -> tuple[slice, slice]:
        """Where the tile's output lands on the canvas."""
        return (slice(y0, y0 + self.y.tile - 2 * self.shrink), slice(x0, x0 + self.x.tile - 2 * self.shrink))

    def blending(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Each tile's 2D output weights (in :attr:`starts` order) and their sum over the frame (cropped, > 0)."""
        windows = [np.outer(wy, wx).astype(np.float32) for wy in self.y.windows for wx in self.x.windows]
        total = np.zeros(self.canvas, dtype=np.float32)
        for (y0, x0), window in zip(self.starts, windows, strict=True):
            total[self.target(y0, x0)] += window
        total = total[self.crop]
        if not (total > 0).all():
            raise RuntimeError("internal error: tiling leaves pixels without weight")
        return windows, total


def same_padding_plan(height: int, width: int, *, multiple: int, max_tile: int | None,
                      tile_overlap: int) -> TilePlan:
    """Reflection padding to ``multiple``, then blended tiles of at most ``max_tile`` px (rounded down to the
    multiple) overlapping by at least ``tile_overlap`` px (rounded up to it); ``max_tile=None``: one tile.

    Raises:
        UserInputError: the rounded tile is not at least twice the rounded overlap.
    """
    overlap = math.ceil(tile_overlap / multiple) * multiple
    tile = None
    if max_tile is not None:
        tile = (max_tile // multiple) * multiple
        if tile == 0 or 2 * overlap > tile:
            raise UserInputError(
                f"max_tile={max_tile}: the tile (rounded down to a multiple of {multiple}: {tile} px) must be "
                f"at least twice tile_overlap={tile_overlap} (rounded up to {overlap})"
            )
    return TilePlan(_same_axis_plan(height, multiple, tile, overlap), _same_axis_plan(width, multiple, tile, overlap),
                    0, "reflect")


def valid_padding_plan(height: int, width: int, *, multiple: int, max_tile: int | None, shrink: int,
                       min_input: int) -> TilePlan:
    """Overlap-tile (numpy "symmetric" mirroring, as the training crops) for a model whose output is ``shrink`` px
    smaller per side than its input and whose valid input sides are ``min_input + k * multiple``.

    Raises:
        UserInputError: ``min_input`` leaves no output, or ``max_tile`` is below the smallest tile above it.
    """
    if min_input <= 2 * shrink:
        raise UserInputError(f"model with output_crop={shrink} needs a min_input_size above {2 * shrink}")
    largest = None
    if max_tile is not None:
        largest = (max_tile - min_input) // multiple * multiple
        if largest < multiple:
            raise UserInputError(
                f"max_tile={max_tile}: tiles of this valid-convolution model need at least {min_input + multiple} px"
            )
    return TilePlan(_valid_axis_plan(height, multiple, min_input, shrink, largest),
                    _valid_axis_plan(width, multiple, min_input, shrink, largest), shrink, "symmetric")


def _same_axis_plan(length: int, multiple: int, tile: int | None, overlap: int) -> AxisPlan:
    """Reflection padding to the multiple, then blended overlapping tiles (same-size output)."""
    pad = _pad_amounts(length, multiple)
    padded = length + sum(pad)
    starts, windows = _axis_plan(padded, tile, overlap)
    return AxisPlan(pad, starts, windows[0].size, windows, padded, slice(pad[0], pad[0] + length))


def _valid_axis_plan(length: int, multiple: int, min_input: int, shrink: int, largest: int | None) -> AxisPlan:
    """Overlap-tile along one axis of a frame mirror-padded to the smallest valid input covering it.

    That padded length is ``units * multiple + min_input``; tiles of ``per_tile * multiple + min_input`` px start
    on multiples of ``multiple`` (the last one flush with the end), so each computes exactly what one pass over
    the whole padded frame computes there. Neighbouring outputs overlap by at least ``min_output`` px (4 px for
    the 5-stage U-Net); the 0/1 windows give every output pixel to exactly one tile, so the kept outputs abut.
    """
    min_output = min_input - 2 * shrink
    units = max(0, math.ceil((length - min_output) / multiple))
    per_tile = units if largest is None else min(units, largest // multiple)
    count = math.ceil(units / per_tile) if per_tile else 1
    per_tile = math.ceil(units / count)  # balanced tiles
    starts = sorted({min(i * per_tile, units - per_tile) * multiple for i in range(count)})
    canvas = units * multiple + min_output
    out_len = per_tile * multiple + min_output
    bounds = [0, *(start + min_output // 2 for start in starts[1:]), canvas]
    windows = []
    for index, start in enumerate(starts):
        window = np.zeros(out_len)
        window[bounds[index] - start : bounds[index + 1] - start] = 1.0
        windows.append(window)
    padded = canvas + 2 * shrink
    before = (padded - length) // 2
    return AxisPlan((before, padded - length - before), starts, per_tile * multiple + min_input, windows, canvas,
                    slice(before - shrink, before - shrink + length))


def _pad_amounts(length: int, multiple: int) -> tuple[int, int]:
    """Split the padding up to the next multiple between both sides, so borders get context on both ends."""
    total = -length % multiple
    return total // 2, total - total // 2


def _axis_plan(length: int, tile: int | None, overlap: int) -> tuple[list[int], list[np.ndarray]]:
    """Tile starts along one padded axis and each tile's 1D blending window."""
    if tile is None or length <= tile:
        return [0], [np.ones(length)]
    stride = tile - overlap
    starts = sorted({min(i * stride, length - tile) for i in range(math.ceil((length - tile) / stride) + 1)})
    ramp = _edge_ramp(overlap)
    windows = []
    for start in starts:
        window = np.ones(tile)
        if start > 0:  # an inner edge: this tile lacks context there, the previous tile takes over
            window[: ramp.size] *= ramp
        if start + tile < length:
            window[tile - ramp.size :] *= ramp[::-1]
        windows.append(window)
    return starts, windows


def _edge_ramp(overlap: int) -> np.ndarray:
    """Window from an inner tile edge inwards: 0 for overlap//4 px, then a cosine rise to 1 over half the overlap.

    Neighbouring tiles overlap by at least ``overlap`` >= 2 * (overlap // 4) px, so every pixel has a tile
    with positive weight that is at least overlap // 4 px away from that tile's inner edges.
    """
    zeros = overlap // 4
    rise = overlap - 2 * zeros
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(rise) + 0.5) / max(rise, 1))
    return np.concatenate([np.zeros(zeros), ramp])
