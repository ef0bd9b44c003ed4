"""Score CTC result folders against the ground truth with the official measures, through py-ctcmetrics.

Two layouts are accepted (the CTC's own, see :func:`find_sequence_pairs`):

- one sequence: ``res`` holds ``maskNNN.tif`` + ``res_track.txt`` (e.g. ``DS/01_RES``) and ``gt`` is that
  sequence's GT folder holding ``TRA/`` (``DS/01_GT``) or the dataset folder holding ``01_GT``;
- a dataset: ``res`` holds ``NN_RES`` folders and ``gt`` holds the matching ``NN_GT`` folders (often the
  same dataset folder); every ``NN_RES`` needs its ``NN_GT``, GT sequences without results are skipped.

DET and TRA use the GT TRA markers, SEG the GT SEG frames (left out, with OP_CSB and OP_CTB, when the GT
has no SEG folder). Before py-ctcmetrics runs, the inputs it would trip over with a bare ``assert`` or a
silently wrong number are checked here and reported as one-line UserInputErrors; an invalid result
folder is reported with the problems py-ctcmetrics found.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from celltune.data_prep.errors import UserInputError
from celltune.data_prep.tracks import parse_man_track
from celltune.platform.ctc_results import MASK_RE, RES_TRACK_TXT, list_masks

logger = logging.getLogger(__name__)

MEASURES = ("SEG", "DET", "TRA", "OP_CSB", "OP_CTB")
_RES_DIR_RE = re.compile(r"^(\d{2,})_RES$")
_GT_DIR_RE = re.compile(r"^(\d{2,})_GT$")
_TRA_RE = re.compile(r"^man_track(\d{3,4})\.tif$")
_SEG_RE = re.compile(r"^man_seg(?:_)?\d{3,4}(?:_\d{3,4})?\.tif$")
_MAX_LISTED_PROBLEMS = 3


@dataclass(frozen=True)
class SequenceScores:
    """The CTC measures of one sequence (None: not computed, e.g. SEG without GT SEG frames).

    ``details`` holds the AOGM breakdown (``AOGM``, ``AOGM_0``, ``AOGM_NS`` ... ``AOGM_EC``) and any extra
    py-ctcmetrics measure asked for.
    """

    name: str
    res: Path
    gt: Path
    frames: int
    seg: float | None
    det: float
    tra: float
    op_csb: float | None
    op_ctb: float | None
    details: dict[str, float] = field(default_factory=dict)

    def measure(self, name: str) -> float | None:
        """A measure by its CTC name: ``SEG``, ``DET``, ``TRA``, ``OP_CSB`` or ``OP_CTB``."""
        return getattr(self, name.lower())

    def to_json(self) -> dict:
        return {"sequence": self.name, "res": str(self.res), "gt": str(self.gt), "frames": self.frames,
                **{m: self.measure(m) for m in MEASURES}, "details": dict(self.details)}


@dataclass(frozen=True)
class EvaluationTable:
    """Scores per sequence, printable as a table and serialisable to JSON."""

    rows: tuple[SequenceScores, ...]

    def mean(self) -> dict[str, float | None]:
        """Mean of each measure over the sequences that have it."""
        out: dict[str, float | None] = {}
        for m in MEASURES:
            values = [v for v in (r.measure(m) for r in self.rows) if v is not None]
            out[m] = float(np.mean(values)) if values else None
        return out

    def format(self) -> str:
        """A fixed-width text table, one line per sequence and a mean line when there are several."""
        width = max([len("sequence")] + [len(r.name) for r in self.rows] + [len("mean")])
        header = f"{'sequence':<{width}}  {'frames':>6}" + "".join(f"  {m:>7}" for m in MEASURES)

        def cells(values: Sequence[float | None]) -> str:
            return "".join(f"  {'-':>7}" if v is None else f"  {v:>7.4f}" for v in values)

        lines = [header, "-" * len(header)]
        for r in self.rows:
            lines.append(f"{r.name:<{width}}  {r.frames:>6}" + cells([r.measure(m) for m in MEASURES]))
        if len(self.rows) > 1:
            mean = self.mean()
            lines.append(f"{'mean':<{width}}  {'':>6}" + cells([mean[m] for m in MEASURES]))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"sequences": [r.to_json() for r in self.rows], "mean": self.mean()}

    def write_json(self, path: Path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (temp file beside it, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_json(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path


def _is_sequence_result(folder: Path) -> bool:
    return (folder / RES_TRACK_TXT).exists() or any(MASK_RE.match(p.name) for p in folder.iterdir())


def _sequence_gt(gt: Path, sequence: str | None) -> Path | None:
    if (gt / "TRA").is_dir():
        return gt
    if sequence is not None and (gt / f"{sequence}_GT" / "TRA").is_dir():
        return gt / f"{sequence}_GT"
    return None


def find_sequence_pairs(res: Path, gt: Path) -> list[tuple[str, Path, Path]]:
    """Pair result folders with GT folders: ``[(sequence, res_dir, gt_dir), ...]`` sorted by sequence.

    ``res`` is either one sequence's result folder (holding ``maskNNN.tif``) or a folder of ``NN_RES``
    folders; ``gt`` is a sequence GT folder (holding ``TRA/``) or a folder of ``NN_GT`` folders.

    Raises:
        UserInputError: a missing folder, no results found, or a result without its GT.
    """
    res, gt = Path(res), Path(gt)
    if not res.is_dir():
        raise UserInputError(f"{res}: result folder not found")
    if not gt.is_dir():
        raise UserInputError(f"{gt}: ground-truth folder not found")
    if _is_sequence_result(res):
        match = _RES_DIR_RE.match(res.name)
        sequence = match.group(1) if match else None
        gt_dir = _sequence_gt(gt, sequence)
        if gt_dir is None:
            wanted = f"TRA/ or {sequence}_GT/TRA/" if sequence else "TRA/"
            raise UserInputError(f"{gt}: no GT tracking markers ({wanted} not found) for results {res}")
        return [(sequence or res.name, res, gt_dir)]
    pairs = []
    for sub in sorted(p for p in res.iterdir() if p.is_dir()):
        match = _RES_DIR_RE.match(sub.name)
        if not match:
            continue
        sequence = match.group(1)
        gt_dir = gt / f"{sequence}_GT"
        if not (gt_dir / "TRA").is_dir():
            raise UserInputError(f"{gt_dir}/TRA: not found (needed to score {sub})")
        pairs.append((sequence, sub, gt_dir))
    if not pairs:
        raise UserInputError(f"{res}: no maskNNN.tif files and no NN_RES folders")
    return pairs


def _frame_headers(paths: dict[int, Path]) -> dict[int, tuple[tuple[int, ...], np.dtype]]:
    import tifffile

    out = {}
    for t, path in paths.items():
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape = tuple(n for n in series.shape[:-2] if n != 1) + tuple(series.shape[-2:])
                out[t] = (shape, np.dtype(series.dtype))
        except Exception as exc:  # tifffile raises many types for damaged files
            raise UserInputError(f"{path}: unreadable TIFF ({' '.join(str(exc).split()) or type(exc).__name__})"
                                 ) from None
    return out


def _check_inputs(res: Path, gt: Path) -> int:
    """Check what py-ctcmetrics assumes without saying so; returns the number of frames."""
    stray = sorted(p.name for p in res.iterdir() if p.name.endswith(".tif") and not MASK_RE.match(p.name))
    if stray:
        raise UserInputError(f"{res / stray[0]}: unexpected TIFF in a result folder (only maskNNN.tif allowed)")
    masks = list_masks(res)
    if not masks:
        raise UserInputError(f"{res}: no maskNNN.tif files")
    track_file = res / RES_TRACK_TXT
    if not track_file.is_file():
        raise UserInputError(f"{track_file}: missing")
    table = parse_man_track(track_file.read_text(encoding="utf-8", errors="replace"), str(track_file))
    if table.size == 0:
        raise UserInputError(f"{track_file}: no tracks (an empty result is invalid for the CTC)")
    tra_dir = gt / "TRA"
    if not (tra_dir / "man_track.txt").is_file():
        raise UserInputError(f"{tra_dir / 'man_track.txt'}: missing")
    tra = {int(m.group(1)): p for p in sorted(tra_dir.iterdir()) if (m := _TRA_RE.match(p.name))}
    if not tra:
        raise UserInputError(f"{tra_dir}: no man_trackNNN.tif files")
    if sorted(tra) != list(range(len(tra))):
        raise UserInputError(f"{tra_dir}: GT markers cover frames {min(tra)}-{max(tra)}, not 0-{len(tra) - 1}; "
                             f"py-ctcmetrics pairs frames by position and cannot score this sequence")
    if set(masks) != set(tra):
        missing = sorted(set(tra) - set(masks))
        if missing:
            raise UserInputError(f"{res}: no mask for frame {missing[0]} ({len(masks)} masks, GT has {len(tra)} "
                                 f"frames)")
        extra = sorted(set(masks) - set(tra))
        raise UserInputError(f"{masks[extra[0]]}: frame {extra[0]} is not in the GT (GT has frames 0-{len(tra) - 1})")
    gt_table = parse_man_track((tra_dir / "man_track.txt").read_text(encoding="utf-8", errors="replace"),
                               str(tra_dir / "man_track.txt"))
    # py-ctcmetrics shifts result labels by the largest GT label in place, in the result's own dtype
    highest = int(table[:, 0].max()) + (int(gt_table[:, 0].max()) if gt_table.size else 0) + 1
    gt_shape, _ = _frame_headers({0: tra[0]})[0]
    for t, (shape, dtype) in _frame_headers(masks).items():
        if shape != gt_shape:
            raise UserInputError(f"{masks[t]}: shape {shape} differs from the GT {tra[0].name} {gt_shape}")
        if dtype.kind not in "iu" or dtype.itemsize < 2:
            raise UserInputError(f"{masks[t]}: dtype {dtype}; expected integer labels of at least 16 bits "
                                 f"(py-ctcmetrics adds the GT's labels in place and would overflow)")
        if highest > np.iinfo(dtype).max:
            raise UserInputError(f"{masks[t]}: result labels up to {int(table[:, 0].max())} plus GT labels would "
                                 f"overflow {dtype} in py-ctcmetrics; relabel the tracks from 1 or save as uint32")
    return len(masks)


def _has_seg(gt: Path) -> bool:
    seg = gt / "SEG"
    return seg.is_dir() and any(_SEG_RE.match(p.name) for p in seg.iterdir())


def _number(value: object) -> float:
    return float(value)  # numpy scalars from py-ctcmetrics -> plain floats for JSON


def evaluate_sequence(
    res: Path,
    gt: Path,
    *,
    name: str | None = None,
    seg: bool | None = None,
    extra_metrics: Sequence[str] = (),
    threads: int = 1,
) -> SequenceScores:
    """Score one sequence's result folder against its GT folder with py-ctcmetrics.

    Args:
        res: result folder with ``maskNNN.tif`` (one per GT TRA frame) and ``res_track.txt``.
        gt: GT folder with ``TRA/`` (markers + ``man_track.txt``) and optionally ``SEG/``.
        name: row name (default: the sequence number of ``NN_RES``, else the folder name).
        seg: compute SEG (and OP_CSB, OP_CTB); None = when ``gt/SEG`` holds frames.
        extra_metrics: further py-ctcmetrics measures to put in ``details`` (e.g. ``"BC(0)"``, ``"LNK"``).
        threads: worker processes for py-ctcmetrics' mask matching (0 = one per CPU).

    Raises:
        UserInputError: missing or inconsistent files (frames, shapes, dtypes, table), or a result that
            py-ctcmetrics finds invalid (its problems named in the message).
    """
    from ctc_metrics import evaluate_sequence as ctc_evaluate

    res, gt = Path(res), Path(gt)
    if not res.is_dir():
        raise UserInputError(f"{res}: result folder not found")
    if not gt.is_dir():
        raise UserInputError(f"{gt}: ground-truth folder not found")
    if name is None:
        match = _RES_DIR_RE.match(res.name)
        name = match.group(1) if match else res.name
    frames = _check_inputs(res, gt)
    if seg is None:
        seg = _has_seg(gt)
    elif seg and not _has_seg(gt):
        raise UserInputError(f"{gt / 'SEG'}: no man_segNNN.tif files, cannot compute SEG")
    metrics = ["Valid", "DET", "TRA", *(["SEG"] if seg else []), *extra_metrics]
    captured = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(captured):
        warnings.simplefilter("always")
        try:
            results = ctc_evaluate(str(res), str(gt), metrics=metrics, threads=threads)
        except AssertionError as exc:
            raise UserInputError(f"{res}: py-ctcmetrics rejected the result: {' '.join(str(exc).split())}"
                                 ) from None
    logger.debug("py-ctcmetrics output for %s: %s", res, captured.getvalue().strip())
    problems = [" ".join(str(w.message).split()) for w in caught if issubclass(w.category, UserWarning)]
    if not results.get("Valid"):
        listed = "; ".join(problems[:_MAX_LISTED_PROBLEMS]) or "no reason given"
        more = f" (and {len(problems) - _MAX_LISTED_PROBLEMS} more)" if len(problems) > _MAX_LISTED_PROBLEMS else ""
        raise UserInputError(f"{res}: invalid CTC result (py-ctcmetrics): {listed}{more}")
    for problem in problems:
        logger.info("%s: %s", res, problem)  # e.g. an empty frame, which the CTC allows
    details = {k: _number(v) for k, v in results.items()
               if k not in MEASURES and k != "Valid" and isinstance(v, int | float | np.number)}
    scores = {m: (None if results.get(m) is None else _number(results[m])) for m in MEASURES}
    for m, v in scores.items():
        if v is not None and math.isnan(v):
            scores[m] = None
    return SequenceScores(name=name, res=res, gt=gt, frames=frames, seg=scores["SEG"], det=scores["DET"],
                          tra=scores["TRA"], op_csb=scores["OP_CSB"], op_ctb=scores["OP_CTB"], details=details)


def evaluate_results(
    res: Path,
    gt: Path,
    *,
    seg: bool | None = None,
    threads: int = 1,
    show_progress: bool = False,
) -> EvaluationTable:
    """Score one sequence or every ``NN_RES`` of a dataset folder (see :func:`find_sequence_pairs`).

    Args:
        res: a result folder or a folder of ``NN_RES`` folders.
        gt: a GT folder (``NN_GT``) or a folder of ``NN_GT`` folders.
        seg: compute SEG; None = wherever the GT has SEG frames.
        threads: worker processes for py-ctcmetrics (0 = one per CPU).
        show_progress: show a tqdm bar over sequences.

    Raises:
        UserInputError: see :func:`find_sequence_pairs` and :func:`evaluate_sequence`.
    """
    from tqdm.auto import tqdm

    pairs = find_sequence_pairs(res, gt)
    rows = []
    for sequence, res_dir, gt_dir in tqdm(pairs, desc="evaluating", unit="seq", disable=not show_progress):
        rows.append(evaluate_sequence(res_dir, gt_dir, name=sequence, seg=seg, threads=threads))
        logger.info("%s: %s", sequence, {m: rows[-1].measure(m) for m in MEASURES})
    return EvaluationTable(rows=tuple(rows))
