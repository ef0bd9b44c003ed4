"""Synthetic datasets in the exact CTC training layout: textured cells that move, touch and divide.

The demo, the tests and CI run on machines without real data, so they need a stand-in that is seeded
(same spec -> identical bytes), fast, learnable by a small network and shaped like the real thing:
GT SEG on some frames only (optionally not every cell, optionally one 2D slice of a 3D frame), ST on
every frame, TRA markers labelled by track id with a consistent ``man_track.txt`` (divisions included).

Layout written under ``<out_root>/<name>/`` for every sequence ``NN`` (``01``, ``02``, ...)::

    NN/tTTT.tif                      raw frame, (Y, X) or (Z, Y, X), uint8 or uint16 (12-bit)
    NN_GT/SEG/man_segTTT.tif         instance ids (uint16), every ``gt_every``-th frame (t % gt_every == 0)
    NN_GT/SEG/man_seg_TTT_ZZZ.tif    instead, with ``gt_slices``: one annotated 2D slice ZZZ of frame TTT
    NN_GT/TRA/man_trackTTT.tif       markers (the cell core) labelled by track id, every frame
    NN_GT/TRA/man_track.txt          ``L B E P`` per track (0-based inclusive frames, parent 0 = none)
    NN_ST/SEG/man_segTTT.tif         silver truth: GT with each cell eroded or dilated by 1 px, every frame

GT/ST instance ids are a random per-frame numbering (as in real CTC data); TRA labels are track ids.
Positions are simulated in physical units where one z step is ``z_spacing`` pixels (anisotropic 3D).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from celltune.data_prep.common import UserInputError

logger = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9+._-]*$"

# Centre distance as a fraction of r_i + r_j: bonded (touching) pairs rest at _BOND_REST and never get
# closer than _BOND_MIN; free cells keep _FREE_MIN (ellipses then overlap a little now and then, which
# also makes them touch). These floors keep every cell's centre voxel its own, so no track vanishes.
_BOND_REST, _BOND_MIN, _FREE_MIN = 0.78, 0.65, 0.9
_MAX_ASPECT = 1.6
_MARKER_D = 0.55  # TRA marker = part of the cell within this normalised distance of its centre
_AREA_CAP = 0.45  # no division once the cells' target areas would cover more of the image than this
_MOMENTUM = 0.8
_DIVISION_LAG = 2  # frames between deciding a division (cell rounds up, brightens) and the split


class SynthSpec(BaseModel):
    """What to generate. Invalid values raise ``UserInputError`` naming the field.

    Args:
        name: dataset folder name (one path component).
        ndim: 2 for (Y, X) frames, 3 for (Z, Y, X) volumes.
        sequences: number of sequences ``01``, ``02``, ...
        frames: frames per sequence (>= 2).
        size: frame height and width in pixels.
        depth: z slices (3D only).
        cells: cells in the first frame.
        dtype: raw dtype; ``uint16`` uses 12-bit values.
        gt_every: GT SEG on frames with ``t % gt_every == 0``.
        seed: random seed; the same spec gives byte-identical files.
        gt_slices: 3D only: write one annotated 2D slice per GT frame instead of full volumes.
        divisions: let cells divide (at least one division per sequence when there is room).
        division_rate: chance per cell and frame of starting a division.
        touching: fraction of the initial cells placed as touching pairs that move together.
        radius: mean cell radius in pixels (default: from ``size`` and ``cells``, about 18% area cover).
        speed: random-walk step of the cell velocity, pixels per frame.
        noise: image noise level (fraction of the intensity range).
        blur: Gaussian blur sigma in pixels (optics).
        look: ``rim`` (bright membrane-like rim) or ``nucleus`` (bright centre, soft edge).
        z_spacing: z step in pixels (3D anisotropy).
        size_jitter: sequences after ``01`` get height/width scaled by up to +-this fraction.
        gt_fraction: fraction of cells annotated in each GT SEG frame (at least one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("Synth-2D", pattern=NAME_PATTERN, max_length=100)
    ndim: Literal[2, 3] = 2
    sequences: int = Field(2, ge=1, le=99)
    frames: int = Field(12, ge=2, le=9999)
    size: int = Field(128, ge=24, le=16384)
    depth: int = Field(16, ge=1, le=2048)
    cells: int = Field(8, ge=1, le=100_000)
    dtype: Literal["uint8", "uint16"] = "uint8"
    gt_every: int = Field(3, ge=1)
    seed: int = Field(0, ge=0)
    gt_slices: bool = False
    divisions: bool = True
    division_rate: float = Field(0.03, ge=0, le=1)
    touching: float = Field(0.3, ge=0, le=1)
    radius: float | None = Field(None, ge=3)
    speed: float = Field(1.5, ge=0, le=100)
    noise: float = Field(0.04, ge=0, le=1)
    blur: float = Field(1.0, ge=0, le=20)
    look: Literal["rim", "nucleus"] = "rim"
    z_spacing: float = Field(3.0, ge=1, le=50)
    size_jitter: float = Field(0.0, ge=0, le=0.5)
    gt_fraction: float = Field(1.0, gt=0, le=1)

    def __init__(self, /, **data: Any) -> None:
        # Pydantic's multi-line ValidationError becomes the project's one-line UserInputError.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise UserInputError(_one_line(exc)) from None

    @property
    def mean_radius(self) -> float:
        """Mean cell radius in pixels (explicit or derived from size and cell count)."""
        if self.radius is not None:
            return float(self.radius)
        return 0.42 * self.size / math.sqrt(self.cells * math.pi)

    @property
    def digits(self) -> int:
        """Digits of the frame index in file names (CTC: 3, or 4 for long sequences)."""
        return 3 if self.frames <= 999 else 4

    @model_validator(mode="after")
    def _check_consistent(self) -> SynthSpec:
        if self.gt_slices and self.ndim != 3:
            raise ValueError("gt_slices: only applies to ndim=3")
        if self.ndim == 3 and self.depth < 3:
            raise ValueError(f"depth: must be >= 3 for ndim=3, got {self.depth}")
        r = self.mean_radius
        if r < 3:
            most = int(0.42**2 * self.size**2 / (9 * math.pi))
            raise ValueError(f"cells: {self.cells} cells do not fit a {self.size}x{self.size} image (at most {most})")
        smallest = math.floor(self.size * (1 - self.size_jitter))
        if 2 * 1.2 * r * math.sqrt(_MAX_ASPECT) + 4 > smallest:
            raise ValueError(f"radius: cells of radius {r:.1f} do not fit a {smallest}x{smallest} image")
        if self.cells * math.pi * r**2 > 0.5 * smallest**2:
            raise ValueError(
                f"cells: {self.cells} cells of radius {r:.1f} cover more than half of a {smallest}x{smallest} image"
            )
        return self


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    msg = first["msg"].removeprefix("Value error, ")
    loc = ".".join(str(part) for part in first["loc"])
    text = f"SynthSpec.{loc}: {msg} (got {first['input']!r})" if loc else f"SynthSpec.{msg}"
    if len(errors) > 1:
        text += f" (+{len(errors) - 1} more)"
    return text


def generate_dataset(out_root: Path, spec: SynthSpec, *, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Write the synthetic dataset ``spec`` to ``out_root / spec.name`` and return that path.

    The dataset is built in a hidden folder beside the target and renamed into place, so a reader never
    sees a half-written dataset.

    Args:
        out_root: folder that receives ``<name>/``; created if missing.
        spec: what to generate.
        overwrite: replace an existing ``<name>/`` (default: refuse).
        show_progress: show a progress bar over frames on a terminal.

    Raises:
        UserInputError: the target exists (without ``overwrite``) or ``out_root`` is not a folder.
    """
    out_root = Path(out_root)
    target = out_root / spec.name
    if target.exists() and not overwrite:
        raise UserInputError(f"{target}: already exists; delete it or choose another name (or overwrite=True)")
    if out_root.exists() and not out_root.is_dir():
        raise UserInputError(f"{out_root}: not a folder")
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".{spec.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        with tqdm(total=spec.sequences * spec.frames, desc=f"synth {spec.name}", unit="frame",
                  disable=None if show_progress else True) as bar:
            for seq in range(1, spec.sequences + 1):
                _write_sequence(tmp, spec, seq, bar)
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote synthetic dataset %s", target)
    return target


def _replace_dir(src: Path, target: Path) -> None:
    if not target.exists():
        os.rename(src, target)
        return
    old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, old)
    os.rename(src, target)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------- simulation


@dataclass
class _Cell:
    track: int
    parent: int
    pos: np.ndarray  # (z, y, x) in physical pixels (z = slice index * z_spacing)
    vel: np.ndarray
    r: float  # mean in-plane radius
    r_target: float
    rz_ratio: float
    aspect: float  # major / minor in-plane axis
    angle: float  # major axis direction in the (y, x) plane
    brightness: float
    rim: float
    nucleus: float
    waves: np.ndarray  # (K, 4): wave vector along (major, minor, z) and phase; texture moves with the cell
    amps: np.ndarray  # (K,)
    age: int = 0
    partner: int | None = None  # track id of the touching partner
    divide_at: int | None = None


class _Simulation:
    """Random walk with momentum, touching pairs, divisions; one snapshot of all cells per frame."""

    def __init__(self, spec: SynthSpec, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
        self.spec, self.shape, self.rng = spec, shape, rng
        self.zs = spec.z_spacing if spec.ndim == 3 else 1.0
        self.cells: list[_Cell] = []
        self.next_track = 1
        self.tracks: dict[int, list[int]] = {}  # track -> [B, E, P]
        self.divided = False
        mid = (spec.frames - 1) // 2
        self.force_at = max(0, mid - _DIVISION_LAG)  # decision frame of the guaranteed division
        self._place_initial()

    def run(self) -> list[list[_Cell]]:
        snapshots = []
        for t in range(self.spec.frames):
            if t > 0:
                self._divide(t)
                self._step()
            self._schedule(t)
            snapshot = []
            for c in self.cells:
                entry = self.tracks.setdefault(c.track, [t, t, c.parent])
                entry[1] = t
                snapshot.append(replace(c, pos=c.pos.copy(), waves=c.waves.copy()))
            snapshots.append(snapshot)
        return snapshots

    # --- cells

    def _new_cell(self, pos: np.ndarray, r: float, parent: int = 0, **kw: Any) -> _Cell:
        rng = self.rng
        k = 4
        direction = rng.normal(size=(k, 3))
        direction[:, 2] *= 0.5 if self.spec.ndim == 3 else 0.0
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        wavelength = rng.uniform(3.0, 9.0, size=(k, 1))
        waves = np.concatenate([2 * np.pi * direction / wavelength, rng.uniform(0, 2 * np.pi, (k, 1))], axis=1)
        rim, nucleus = (rng.uniform(0.25, 0.45), rng.uniform(0.0, 0.15)) if self.spec.look == "rim" else (
            0.0, rng.uniform(0.35, 0.6))
        fields = dict(
            track=self.next_track, parent=parent, pos=pos, vel=np.zeros(3), r=r, r_target=r,
            rz_ratio=rng.uniform(0.8, 1.0), aspect=rng.uniform(1.0, 1.45), angle=rng.uniform(0, np.pi),
            brightness=rng.uniform(0.45, 0.85), rim=rim, nucleus=nucleus, waves=waves,
            amps=rng.uniform(0.04, 0.09, size=k),
        )
        fields.update(kw)
        self.next_track += 1
        return _Cell(**fields)

    def _bounds(self, r: np.ndarray, rz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z_max = (self.shape[0] - 1) * self.zs
        ext = r * math.sqrt(_MAX_ASPECT) + 1
        lo = np.stack([rz, ext, ext], axis=-1)
        hi = np.stack([z_max - rz, self.shape[1] - 1 - ext, self.shape[2] - 1 - ext], axis=-1)
        squeeze = lo > hi  # volume thinner than the cell (always so in z for 2D): centre it
        mid = (lo + hi) / 2
        return np.where(squeeze, mid, lo), np.where(squeeze, mid, hi)

    def _random_pos(self, r: float, rz: float) -> np.ndarray:
        lo, hi = self._bounds(np.array([r]), np.array([rz]))
        pos = self.rng.uniform(lo[0], hi[0])
        if self.spec.ndim == 2:
            pos[0] = 0.0
        return pos

    def _fits(self, pos: np.ndarray, r: float, placed: list[_Cell], factor: float = 1.0) -> bool:
        lo, hi = self._bounds(np.array([r]), np.array([r]))
        if np.any(pos[1:] < lo[0, 1:] - 1e-9) or np.any(pos[1:] > hi[0, 1:] + 1e-9):
            return False
        if not placed:
            return True
        centres = np.stack([c.pos for c in placed])
        radii = np.array([c.r for c in placed])
        return bool(np.all(np.linalg.norm(centres - pos, axis=1) >= factor * (r + radii)))

    def _place_initial(self) -> None:
        spec, rng = self.spec, self.rng
        radii = spec.mean_radius * rng.uniform(0.8, 1.2, size=spec.cells)
        pairs = max(1, round(spec.touching * spec.cells / 2)) if spec.touching > 0 and spec.cells >= 2 else 0
        i, skipped = 0, 0
        while i < spec.cells:
            paired = pairs > 0 and i + 1 < spec.cells
            for _ in range(300):
                pos = self._random_pos(radii[i], radii[i])
                if not self._fits(pos, radii[i], self.cells):
                    continue
                if not paired:
                    self.cells.append(self._new_cell(pos, radii[i]))
                    break
                phi = rng.uniform(0, 2 * np.pi)
                offset = _BOND_REST * (radii[i] + radii[i + 1]) * np.array([0.0, math.cos(phi), math.sin(phi)])
                pos2 = pos + offset
                if self._fits(pos2, radii[i + 1], self.cells):
                    a = self._new_cell(pos, radii[i])
                    b = self._new_cell(pos2, radii[i + 1])
                    a.partner, b.partner = b.track, a.track
                    b.vel = a.vel.copy()
                    self.cells += [a, b]
                    break
            else:
                skipped += 2 if paired else 1
            if paired:
                pairs -= 1
                i += 2
            else:
                i += 1
        if skipped:
            logger.warning("synth %s: no room for %d of %d cells", spec.name, skipped, spec.cells)

    # --- dynamics

    def _schedule(self, t: int) -> None:
        spec, rng = self.spec, self.rng
        if not spec.divisions:
            return
        area = sum(math.pi * c.r_target**2 * (1.62 if c.divide_at is not None else 1.0) for c in self.cells)
        cap = _AREA_CAP * self.shape[1] * self.shape[2]
        candidates = [c for c in self.cells if c.divide_at is None and c.age >= min(2, t)]
        draws = rng.random(len(candidates))
        for c, u in zip(candidates, draws, strict=True):
            fits = area + 0.62 * math.pi * c.r_target**2 <= cap
            if u < spec.division_rate and t + _DIVISION_LAG < spec.frames and fits:
                c.divide_at = t + _DIVISION_LAG
                area += 0.62 * math.pi * c.r_target**2
                self.divided = True
        if not self.divided and t == self.force_at and candidates:
            c = max(candidates, key=lambda c: c.r)
            if area + 0.62 * math.pi * c.r_target**2 <= cap:
                c.divide_at = min(t + _DIVISION_LAG, spec.frames - 1)
                self.divided = True

    def _divide(self, t: int) -> None:
        rng, speed = self.rng, self.spec.speed
        for c in [c for c in self.cells if c.divide_at == t]:
            self.cells.remove(c)
            for other in self.cells:
                if other.partner == c.track:
                    other.partner = None
            axis = np.array([0.0, math.cos(c.angle), math.sin(c.angle)])
            r_d = 0.72 * c.r
            daughters = []
            for sign in (1.0, -1.0):
                daughters.append(self._new_cell(
                    c.pos + sign * 0.5 * c.r * axis, r_d, parent=c.track,
                    r_target=c.r_target * rng.uniform(0.85, 0.95), aspect=1.3,
                    angle=c.angle + np.pi / 2 + rng.normal(0, 0.2),
                    brightness=float(np.clip(c.brightness * rng.uniform(0.9, 1.1), 0.4, 0.9)),
                    vel=0.5 * c.vel + sign * 0.4 * speed * axis, rim=c.rim, nucleus=c.nucleus,
                ))
            daughters[0].partner, daughters[1].partner = daughters[1].track, daughters[0].track
            self.cells += daughters

    def _step(self) -> None:
        spec, rng = self.spec, self.rng
        cells = self.cells
        n = len(cells)
        if n == 0:
            return
        for c in cells:
            c.age += 1
            c.r += 0.25 * (c.r_target - c.r)
            c.angle += rng.normal(0, 0.06)
            c.aspect = 1 + 0.4 * (c.aspect - 1) if c.divide_at is not None else float(
                np.clip(c.aspect + rng.normal(0, 0.03), 1.0, _MAX_ASPECT))
            c.waves[:, 3] += rng.normal(0, 0.25, size=len(c.waves))
            if c.partner is not None and rng.random() < 0.04:  # touching pairs drift apart now and then
                for other in cells:
                    if other.track == c.partner:
                        other.partner = None
                c.partner = None
        index = {c.track: i for i, c in enumerate(cells)}
        bonds = sorted({tuple(sorted((i, index[c.partner]))) for i, c in enumerate(cells) if c.partner in index})
        scale = np.array([0.3 if spec.ndim == 3 else 0.0, 1.0, 1.0])
        vel = np.stack([c.vel for c in cells])
        vel = _MOMENTUM * vel + math.sqrt(1 - _MOMENTUM**2) * spec.speed * scale * rng.standard_normal((n, 3))
        for i, j in bonds:  # partners move together
            mean = (vel[i] + vel[j]) / 2
            vel[i], vel[j] = (vel[i] + mean) / 2, (vel[j] + mean) / 2
        pos = np.stack([c.pos for c in cells]) + vel
        radii = np.array([c.r for c in cells])
        for i, j in bonds:  # spring towards the resting distance
            delta = pos[j] - pos[i]
            dist = max(float(np.linalg.norm(delta)), 1e-6)
            shift = 0.25 * (dist - _BOND_REST * (radii[i] + radii[j])) * delta / dist
            pos[i] += shift
            pos[j] -= shift
        rz = radii * np.array([c.rz_ratio for c in cells])
        lo, hi = self._bounds(radii, rz)
        pos = self._relax(pos, radii, bonds, lo, hi)
        vel = np.where((pos <= lo + 1e-9) & (vel < 0) | (pos >= hi - 1e-9) & (vel > 0), -vel, vel)
        for c, p, v in zip(cells, pos, vel, strict=True):
            c.pos, c.vel = p, v

    def _relax(self, pos: np.ndarray, radii: np.ndarray, bonds: list[tuple[int, int]], lo: np.ndarray,
               hi: np.ndarray) -> np.ndarray:
        """Push overlapping cells apart (and into the image) until the minimum distances hold."""
        partner = np.full(len(pos), -1)
        for i, j in bonds:
            partner[i], partner[j] = j, i
        pos = np.clip(pos, lo, hi)
        reach = 2 * _FREE_MIN * float(radii.max())
        for _ in range(50):
            pairs = cKDTree(pos).query_pairs(reach, output_type="ndarray")
            if len(pairs) == 0:
                break
            i, j = pairs[:, 0], pairs[:, 1]
            need = np.where(partner[i] == j, _BOND_MIN, _FREE_MIN) * (radii[i] + radii[j])
            delta = pos[i] - pos[j]
            dist = np.linalg.norm(delta, axis=1)
            push = need - dist
            hit = push > 1e-3
            if not hit.any():
                break
            i, j, delta, dist, push = i[hit], j[hit], delta[hit], dist[hit], push[hit]
            unit = np.where(dist[:, None] > 1e-6, delta / np.maximum(dist, 1e-6)[:, None], [0.0, 0.6, 0.8])
            move = 0.55 * push[:, None] * unit
            np.add.at(pos, i, move)
            np.add.at(pos, j, -move)
            pos = np.clip(pos, lo, hi)
        return pos


# --------------------------------------------------------------------------------------------- rendering


@dataclass
class _Frame:
    labels: np.ndarray  # (Z, Y, X) int32 track ids of the full cell masks
    markers: np.ndarray  # (Z, Y, X) uint16 track ids of the cell cores
    raw: np.ndarray  # (Z, Y, X) float32 in [0, 1]


def _render(cells: list[_Cell], shape: tuple[int, int, int], spec: SynthSpec, zs: float, background: np.ndarray,
            rng: np.random.Generator, t: int) -> _Frame:
    labels = np.zeros(shape, np.int32)
    markers = np.zeros(shape, np.uint16)
    best = np.full(shape, np.inf, np.float32)
    parts = []
    for c in cells:  # each pixel goes to the cell with the smallest normalised distance: touching cells split
        ra, rb = c.r * math.sqrt(c.aspect), c.r / math.sqrt(c.aspect)
        rz = c.r * c.rz_ratio
        cz, cy, cx = c.pos
        box = []
        for centre, extent, size, step in ((cz, rz, shape[0], zs), (cy, ra, shape[1], 1.0), (cx, ra, shape[2], 1.0)):
            first, last = math.floor((centre - extent) / step), math.ceil((centre + extent) / step)
            box.append(slice(max(0, first), min(size, last + 1)))
        sl = tuple(box)
        zz = (np.arange(sl[0].start, sl[0].stop) * zs - cz)[:, None, None]
        yy = (np.arange(sl[1].start, sl[1].stop) - cy)[None, :, None]
        xx = (np.arange(sl[2].start, sl[2].stop) - cx)[None, None, :]
        ca, sa = math.cos(c.angle), math.sin(c.angle)
        u, v = ca * yy + sa * xx, -sa * yy + ca * xx
        d = np.sqrt((zz / rz) ** 2 + (u / ra) ** 2 + (v / rb) ** 2).astype(np.float32)
        take = d < np.minimum(best[sl], 1.0)
        best[sl][take] = d[take]
        labels[sl][take] = c.track
        parts.append((c, sl, d, u, v, zz))

    raw = background.copy()
    for c, sl, d, u, v, zz in parts:
        own = labels[sl] == c.track
        core = own & (d < _MARKER_D)
        centre = tuple(min(max(round(p / s), b.start), b.stop - 1) - b.start for p, s, b in zip(c.pos, (zs, 1, 1), sl,
                                                                                                strict=True))
        if own[centre]:
            core[centre] = True
        if not core.any():
            raise RuntimeError(f"synth: cell {c.track} vanished in frame {t}; use fewer or smaller cells")
        markers[sl][core] = c.track
        phase = c.waves[:, 0, None, None, None] * u + c.waves[:, 1, None, None, None] * v \
            + c.waves[:, 2, None, None, None] * zz + c.waves[:, 3, None, None, None]
        texture = np.tensordot(c.amps, np.sin(phase), axes=1) / max(float(c.amps.sum()), 1e-6) * 0.25
        mitotic = c.divide_at is not None
        profile = (0.6 + 0.4 * (1 - d)) * (1 + texture) + c.rim * np.exp(-(((d - 0.88) / 0.09) ** 2)) \
            + (c.nucleus + (0.25 if mitotic else 0.0)) * np.exp(-((d / 0.45) ** 2))
        if spec.look == "nucleus":
            profile = profile * np.clip((1.0 - d) / 0.25, 0.0, 1.0) ** 0.5
        value = c.brightness * (1.15 if mitotic else 1.0) * profile
        raw[sl][own] = (raw[sl] + value)[own]

    seam = _contacts(labels)  # a dim line where two cells touch, as between real touching cells
    raw[seam] *= 0.55
    if spec.blur > 0:
        raw = ndimage.gaussian_filter(raw, sigma=(spec.blur * 1.5 / zs if shape[0] > 1 else 0.0, spec.blur, spec.blur))
    raw += rng.standard_normal(shape, dtype=np.float32) * np.float32(spec.noise) * (0.5 + raw)
    return _Frame(labels, markers, np.clip(raw, 0.0, 1.0))


def _contacts(labels: np.ndarray) -> np.ndarray:
    """Pixels with a face neighbour of a different cell (not background)."""
    seam = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        if labels.shape[axis] < 2:
            continue
        a = labels.swapaxes(0, axis)
        s = seam.swapaxes(0, axis)
        diff = (a[:-1] != a[1:]) & (a[:-1] > 0) & (a[1:] > 0)
        s[:-1] |= diff
        s[1:] |= diff
    return seam


def _background(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Dim, unevenly lit background (fixed per sequence, like a microscope's illumination)."""
    _, ny, nx = shape
    y = np.linspace(-1, 1, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, nx, dtype=np.float32)[None, None, :]
    gy, gx = rng.uniform(-0.03, 0.03, size=2)
    blotches = ndimage.gaussian_filter(rng.standard_normal((1, ny, nx)).astype(np.float32), sigma=max(ny, nx) / 16)
    blotches *= 0.02 / max(float(blotches.std()), 1e-6)
    return np.broadcast_to(0.08 + gy * y + gx * x + blotches, shape).astype(np.float32)


def _relabel(labels: np.ndarray, tracks: list[int], rng: np.random.Generator, keep: np.ndarray | None = None
             ) -> np.ndarray:
    """Map track ids to a random per-frame numbering 1..n (0 for tracks not kept)."""
    lut = np.zeros(max(tracks, default=0) + 1, np.uint16)
    ids = rng.permutation(len(tracks)) + 1
    for track, new, k in zip(tracks, ids, keep if keep is not None else [True] * len(tracks), strict=True):
        lut[track] = new if k else 0
    return lut[labels]


def _silver(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """GT (ids 1..count) perturbed like a consensus of methods: each cell eroded, dilated or kept by 1 px."""
    ops = np.zeros(count + 1, np.int8)
    ops[1:] = rng.choice(np.array([-1, 0, 1], np.int8), size=count, p=[0.4, 0.2, 0.4])
    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    interior = ndimage.grey_erosion(labels, footprint=cross, mode="nearest") == ndimage.grey_dilation(
        labels, footprint=cross, mode="nearest")
    grown = ndimage.grey_dilation(labels, footprint=cross, mode="nearest")
    out = labels.copy()
    out[(ops[labels] == -1) & ~interior] = 0
    fill = (labels == 0) & (ops[grown] == 1)
    out[fill] = grown[fill]
    return out


def _write_sequence(root: Path, spec: SynthSpec, seq: int, bar: tqdm) -> None:
    name = f"{seq:02d}"
    rng_shape = np.random.default_rng([spec.seed, seq, 0])
    rng_sim = np.random.default_rng([spec.seed, seq, 1])
    rng_img = np.random.default_rng([spec.seed, seq, 2])
    rng_lab = np.random.default_rng([spec.seed, seq, 3])  # own streams: changing GT options keeps raw bytes
    ny = nx = spec.size
    if seq > 1 and spec.size_jitter > 0:
        ny, nx = (round(spec.size * f) for f in 1 + rng_shape.uniform(-spec.size_jitter, spec.size_jitter, 2))
    shape = (spec.depth if spec.ndim == 3 else 1, ny, nx)
    sim = _Simulation(spec, shape, rng_sim)
    snapshots = sim.run()
    background = _background(shape, rng_img)

    raw_dir, seg_dir = root / name, root / f"{name}_GT" / "SEG"
    tra_dir, st_dir = root / f"{name}_GT" / "TRA", root / f"{name}_ST" / "SEG"
    for folder in (raw_dir, seg_dir, tra_dir, st_dir):
        folder.mkdir(parents=True)
    out_shape = shape if spec.ndim == 3 else shape[1:]
    for t, cells in enumerate(snapshots):
        frame = _render(cells, shape, spec, sim.zs, background, rng_img, t)
        tt = f"{t:0{spec.digits}d}"
        _write(raw_dir / f"t{tt}.tif", _to_dtype(frame.raw, spec.dtype).reshape(out_shape))
        _write(tra_dir / f"man_track{tt}.tif", frame.markers.reshape(out_shape))
        tracks = sorted(c.track for c in cells)
        st = _silver(_relabel(frame.labels, tracks, rng_lab), len(tracks), rng_lab)
        _write(st_dir / f"man_seg{tt}.tif", st.reshape(out_shape))
        if t % spec.gt_every == 0:
            keep = rng_lab.random(len(tracks)) < spec.gt_fraction
            if len(keep) and not keep.any():
                keep[rng_lab.integers(len(keep))] = True
            gt = _relabel(frame.labels, tracks, rng_lab, keep)
            if spec.gt_slices:
                counts = [len(np.unique(gt[z])) for z in range(gt.shape[0])]
                z = int(np.argmax(counts))
                _write(seg_dir / f"man_seg_{tt}_{z:03d}.tif", gt[z])
            else:
                _write(seg_dir / f"man_seg{tt}.tif", gt.reshape(out_shape))
        bar.update(1)
    lines = [f"{label} {b} {e} {p}\n" for label, (b, e, p) in sorted(sim.tracks.items())]
    (tra_dir / "man_track.txt").write_text("".join(lines))


def _to_dtype(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":
        return np.round(raw * 255).astype(np.uint8)
    return np.round(100 + raw * 3900).astype(np.uint16)  # 12-bit camera range with a dark offset


def _write(path: Path, array: np.ndarray) -> None:
    tifffile.imwrite(path, array, photometric="minisblack")
