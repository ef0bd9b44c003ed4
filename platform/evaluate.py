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

On the GT SEG frames the table also reports instance precision and recall at IoU 0.25, 0.5 and 0.75, pixel IoU
and the adapted Rand error (:mod:`celltune.trainables.metrics`), per sequence and pooled over the dataset's
sequences (match counts summed over all frames; pixel IoU and Rand error averaged over frames);
:func:`write_precision_recall_curve` draws precision and recall against the IoU threshold.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from celltune.data_prep.common import UserInputError
from celltune.data_prep.tracks import parse_man_track
from celltune.platform.ctc_results import MASK_RE, RES_TRACK_TXT, list_masks
from celltune.trainables.metrics import REPORT_THRESHOLDS, InstanceScores

logger = logging.getLogger(__name__)

MEASURES = ("SEG", "DET", "TRA", "OP_CSB", "OP_CTB")
_RES_DIR_RE = re.compile(r"^(\d{2,})_RES$")
_GT_DIR_RE = re.compile(r"^(\d{2,})_GT$")
_TRA_RE = re.compile(r"^man_track(\d{3,4})\.tif$")
_SEG_RE = re.compile(r"^man_seg(?:_)?\d{3,4}(?:_\d{3,4})?\.tif$")
_SEG_FRAME_RE = re.compile(r"^man_seg_?(\d{3,4})(?:_(\d{3,4}))?\.tif$")  # frame, and slice for 3D slice GT
# Instance columns of the table: (header, summary key); the summary keys are those of InstanceScores.summary.
INSTANCE_COLUMNS = (
    *((f"{name[0].upper()}@{t:g}", f"{name}@{t:g}") for t in REPORT_THRESHOLDS for name in ("precision", "recall")),
    ("pixIoU", "pixel_iou"),
    ("ARE", "are"),
)
_MAX_LISTED_PROBLEMS = 3


@dataclass(frozen=True)
class SequenceScores:
    """The CTC measures of one sequence (None: not computed, e.g. SEG without GT SEG frames, or DET and TRA of a
    SEG-only evaluation, whose ``frames`` are the GT SEG frames it predicted).

    ``details`` holds the AOGM breakdown (``AOGM``, ``AOGM_0``, ``AOGM_NS`` ... ``AOGM_EC``) and any extra
    py-ctcmetrics measure asked for; ``instance`` the instance measures pooled over the GT SEG frames (None
    when not computed).
    """

    name: str
    res: Path
    gt: Path
    frames: int
    seg: float | None
    det: float | None
    tra: float | None
    op_csb: float | None
    op_ctb: float | None
    details: dict[str, float] = field(default_factory=dict)
    instance: InstanceScores | None = None

    def measure(self, name: str) -> float | None:
        """A measure by its CTC name: ``SEG``, ``DET``, ``TRA``, ``OP_CSB`` or ``OP_CTB``."""
        return getattr(self, name.lower())

    def to_json(self) -> dict:
        return {"sequence": self.name, "res": str(self.res), "gt": str(self.gt), "frames": self.frames,
                **{m: self.measure(m) for m in MEASURES}, "details": dict(self.details),
                "instance": None if self.instance is None else self.instance.summary()}


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

    def dataset_instance(self) -> InstanceScores | None:
        """Instance measures pooled over every sequence's GT SEG frames; None when no sequence has them."""
        parts = [r.instance for r in self.rows if r.instance is not None]
        if not parts:
            return None
        pooled = InstanceScores(parts[0].thresholds)
        for part in parts:
            pooled.update(part)
        return pooled

    def instance_metrics(self) -> dict[str, float]:
        """Flat instance numbers for a metrics logger: ``<sequence>/<key>`` and ``dataset/<key>`` with the keys
        of ``InstanceScores.summary`` (``precision@0.5``, ``recall@0.5``, ``f1@0.5``, ``pixel_iou``, ``are``, ...);
        undefined values are left out."""
        out: dict[str, float] = {}
        parts = [(r.name, r.instance) for r in self.rows if r.instance is not None]
        dataset = self.dataset_instance()
        if dataset is not None:
            parts.append(("dataset", dataset))
        for name, scores in parts:
            for key, value in scores.summary().items():
                if value is not None and key != "frames":
                    out[f"{name}/{key}"] = float(value)
        return out

    def format(self) -> str:
        """A fixed-width text table, one line per sequence and a mean line when there are several; below it,
        when computed, the instance measures per sequence and pooled over the dataset."""
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
        dataset = self.dataset_instance()
        if dataset is not None:
            lines += ["", self._format_instance(width, dataset)]
        return "\n".join(lines)

    def _format_instance(self, width: int, dataset: InstanceScores) -> str:
        width = max(width, len("dataset"))
        header = f"{'sequence':<{width}}  {'frames':>6}" + "".join(f"  {h:>7}" for h, _ in INSTANCE_COLUMNS)
        caption = "instance measures on the GT SEG frames (P/R@t: matched at IoU >= t; dataset: pooled frames)"
        lines = [caption, header, "-" * len(header)]

        def line(name: str, scores: InstanceScores | None) -> str:
            if scores is None:
                return f"{name:<{width}}  {'-':>6}" + "".join(f"  {'-':>7}" for _ in INSTANCE_COLUMNS)
            summary = scores.summary()
            values = [summary[key] for _, key in INSTANCE_COLUMNS]
            return f"{name:<{width}}  {scores.frames:>6}" + "".join(
                f"  {'-':>7}" if v is None else f"  {v:>7.4f}" for v in values)

        lines += [line(r.name, r.instance) for r in self.rows]
        if len(self.rows) > 1:
            lines.append(line("dataset", dataset))
        return "\n".join(lines)

    def to_json(self) -> dict:
        dataset = self.dataset_instance()
        pooled = None
        if dataset is not None:
            thresholds, precision, recall = dataset.curve()
            pooled = {**dataset.summary(), "curve": {"threshold": thresholds.tolist(), "precision": precision.tolist(),
                                                     "recall": recall.tolist()}}
        return {"sequences": [r.to_json() for r in self.rows], "mean": self.mean(), "dataset": pooled}

    def write_json(self, path: Path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (temp file beside it, then rename)."""
        from celltune.data_prep.common import write_atomic

        return write_atomic(Path(path), json.dumps(self.to_json(), indent=2) + "\n")


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
    if len(tra) == 1:
        raise UserInputError(f"{tra_dir}: one GT frame; py-ctcmetrics needs at least two frames to score a sequence")
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


def read_labels(path: Path) -> np.ndarray:
    """An integer label image with leading singleton axes dropped (as :func:`_frame_headers` reports shapes)."""
    import tifffile

    try:
        labels = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for damaged files
        raise UserInputError(f"{path}: unreadable TIFF ({' '.join(str(exc).split()) or type(exc).__name__})"
                             ) from None
    while labels.ndim > 2 and labels.shape[0] == 1:
        labels = labels[0]
    if labels.dtype.kind not in "iub":
        kind = "float " if labels.dtype.kind == "f" else ""
        raise UserInputError(f"{path}: label image has {kind}dtype {labels.dtype}")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise UserInputError(f"{path}: label image has negative label {labels.min()}")
    return labels


def instance_scores(res: Path, gt: Path) -> InstanceScores:
    """Instance precision/recall, pixel IoU and adapted Rand error of ``res``'s masks on ``gt``'s SEG frames.

    A slice file ``man_seg_TTT_ZZZ.tif`` is compared with slice ZZZ of ``maskTTT.tif``.

    Raises:
        UserInputError: a GT SEG frame without its result mask, unreadable or non-integer labels, or shapes
            that differ.
    """
    res, gt = Path(res), Path(gt)
    masks = list_masks(res)
    files = []
    for path in sorted((gt / "SEG").iterdir()):
        if match := _SEG_FRAME_RE.match(path.name):
            files.append((int(match.group(1)), None if match.group(2) is None else int(match.group(2)), path))
    scores = InstanceScores()
    cached: tuple[int, np.ndarray] | None = None
    for t, z, path in sorted(files, key=lambda item: (item[0], -1 if item[1] is None else item[1])):
        if t not in masks:
            raise UserInputError(f"{path}: no result mask{t:03d}.tif in {res} for this GT SEG frame")
        if cached is None or cached[0] != t:
            cached = (t, read_labels(masks[t]))
        predicted = cached[1]
        reference = read_labels(path)
        if z is not None:
            if predicted.ndim != reference.ndim + 1 or not 0 <= z < predicted.shape[0]:
                raise UserInputError(f"{path}: slice {z} of frame {t}, but {masks[t].name} has shape "
                                     f"{predicted.shape}")
            predicted = predicted[z]
        if reference.shape != predicted.shape:
            raise UserInputError(f"{path}: shape {reference.shape} differs from the result {masks[t].name} "
                                 f"{predicted.shape}")
        scores.add(reference, predicted)
    return scores


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
    instance: bool = True,
) -> SequenceScores:
    """Score one sequence's result folder against its GT folder with py-ctcmetrics.

    Args:
        res: result folder with ``maskNNN.tif`` (one per GT TRA frame) and ``res_track.txt``.
        gt: GT folder with ``TRA/`` (markers + ``man_track.txt``) and optionally ``SEG/``.
        name: row name (default: the sequence number of ``NN_RES``, else the folder name).
        seg: compute SEG (and OP_CSB, OP_CTB); None = when ``gt/SEG`` holds frames.
        extra_metrics: further py-ctcmetrics measures to put in ``details`` (e.g. ``"BC(0)"``, ``"LNK"``).
        threads: worker processes for py-ctcmetrics' mask matching (0 = one per CPU).
        instance: with SEG, also score instance precision/recall, pixel IoU and adapted Rand error on the GT
            SEG frames (:func:`instance_scores`).

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
    pooled = instance_scores(res, gt) if seg and instance else None
    return SequenceScores(name=name, res=res, gt=gt, frames=frames, seg=scores["SEG"], det=scores["DET"],
                          tra=scores["TRA"], op_csb=scores["OP_CSB"], op_ctb=scores["OP_CTB"], details=details,
                          instance=pooled)


def evaluate_results(
    res: Path,
    gt: Path,
    *,
    seg: bool | None = None,
    threads: int = 1,
    show_progress: bool = False,
    instance: bool = True,
) -> EvaluationTable:
    """Score one sequence or every ``NN_RES`` of a dataset folder (see :func:`find_sequence_pairs`).

    Args:
        res: a result folder or a folder of ``NN_RES`` folders.
        gt: a GT folder (``NN_GT``) or a folder of ``NN_GT`` folders.
        seg: compute SEG; None = wherever the GT has SEG frames.
        threads: worker processes for py-ctcmetrics (0 = one per CPU).
        show_progress: show a tqdm bar over sequences.
        instance: with SEG, also score the instance measures (see :func:`evaluate_sequence`).

    Raises:
        UserInputError: see :func:`find_sequence_pairs` and :func:`evaluate_sequence`.
    """
    from tqdm.auto import tqdm

    pairs = find_sequence_pairs(res, gt)
    rows = []
    for sequence, res_dir, gt_dir in tqdm(pairs, desc="evaluating", unit="seq",
                                          disable=None if show_progress else True):
        rows.append(evaluate_sequence(res_dir, gt_dir, name=sequence, seg=seg, threads=threads, instance=instance))
        logger.info("%s: %s", sequence, {m: rows[-1].measure(m) for m in MEASURES})
    return EvaluationTable(rows=tuple(rows))


def write_precision_recall_curve(table: EvaluationTable, path: Path, *, title: str | None = None) -> Path | None:
    """Draw instance precision and recall against the IoU threshold (each sequence, and the dataset pooled when
    there are several) into PNG ``path`` atomically; None, writing nothing, when no sequence has GT SEG scores."""
    from celltune.platform.atomic_files import save_figure_atomic
    from celltune.platform.plots import precision_recall_figure

    curves = {f"sequence {r.name}": r.instance.curve() for r in table.rows if r.instance is not None}
    if not curves:
        logger.info("no instance scores (no GT SEG frames): no precision/recall curve for %s", path)
        return None
    dataset = table.dataset_instance()
    if len(curves) > 1 and dataset is not None:
        curves["dataset"] = dataset.curve()
    return save_figure_atomic(precision_recall_figure(curves, title=title or "instance precision and recall"), path)
