"""Predict CTC result folders (``maskNNN.tif`` + ``res_track.txt``) for new sequences with a trained model.

Input: what :func:`~celltune.platform.predict_inputs.find_sequences` finds at a path (a CTC sequence folder, a
TIFF stack, a celltune store, a CTC dataset folder); each sequence is predicted by
:func:`~celltune.platform.predict_one.iter_predict_sequence` and written by
:func:`~celltune.platform.ctc_results.write_ctc_result`. The model's contract with the input
(:func:`~celltune.platform.predict_checks.check_prediction`) is checked once, for every sequence, before any
inference; the per-sequence code does not check it again.

Output: a single sequence (a sequence folder or a TIFF stack) is written to ``out`` itself; a collection (a
store or a folder of sequences) to ``out/<seq>_RES`` per sequence, the layout ``celltune evaluate`` reads.
Either way the output appears complete or not at all: results go into a hidden folder beside ``out`` that
is renamed into place at the end.

Several sequences run as one Ray task each (the weights travel once through the object store); the
driver writes what the tasks return, so workers need to read the input but never write to the driver's disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celltune.data_prep.common import UserInputError, default_permissions, missing_folders, remove_empty_folders
from celltune.platform.ctc_results import write_ctc_result
from celltune.platform.predict_checks import check_prediction
from celltune.platform.predict_inputs import SequenceSource, find_sequences
from celltune.platform.predict_one import SequenceOutcome, iter_predict_sequence
from celltune.platform.predict_options import PredictOptions
from celltune.trainables.model_card import ModelCard

logger = logging.getLogger(__name__)


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty output folder (or a file) unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: exists and is not a folder")
    blocker = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
    if blocker is not None:
        raise UserInputError(f"{out}: cannot be created, {blocker} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserInputError(f"{out}: output folder exists and is not empty (pass --overwrite to replace it)")


@dataclass(frozen=True)
class SequenceSummary:
    """What the CLI prints per sequence."""

    name: str
    folder: Path
    frames: int
    cells: int
    tracks: int
    divisions: int
    seconds: float
    timings: dict[str, float]

    def line(self, folder: bool = True) -> str:
        per_frame = self.cells / self.frames if self.frames else 0.0
        text = (f"{self.name}: {self.frames} frames, {self.cells} cells ({per_frame:.1f}/frame), "
                f"{self.tracks} tracks, {self.divisions} divisions, {self.seconds:.1f} s")
        return f"{text} -> {self.folder}" if folder else text


def _result_name(source: SequenceSource) -> str:
    return f"{source.name}_RES"


def _predict_task(weights, card: ModelCard, params: dict, source: SequenceSource,
                  options: PredictOptions) -> Iterator[tuple[str, Any]]:
    """Ray generator task: rebuild the network, load the shared weights, stream progress and the outcome (the
    driver checked the model against every sequence before starting any task).

    A UserInputError becomes ``("error", message)`` so the driver raises the same one line.
    """
    from celltune.trainables.architectures import model_from_config

    try:
        model = model_from_config(card.model.registry_config())
        model.load_state_dict(weights)
        yield from iter_predict_sequence(model.eval(), card, params, source, options)
    except UserInputError as exc:
        yield ("error", str(exc))


def _run_in_ray(model, card: ModelCard, params: Mapping[str, Any], sources: list[SequenceSource],
                options: PredictOptions, bar, on_done: Callable[[SequenceOutcome], None]) -> None:
    import ray

    from celltune.data_prep.ray_session import task_events

    gpus = 1 if str(options.device).startswith("cuda") else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(_predict_task)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    weights = ray.put(state)
    running = {task.remote(weights, card, dict(params), s, options): s for s in sources}
    try:
        for gen, _, event, payload in task_events(running, lambda source: f"predicting {source.where}"):
            if event == "error":
                raise UserInputError(payload)
            if event == "predict":
                bar.update(payload)
            elif event == "done":
                del running[gen]
                on_done(payload)
                bar.set_postfix_str(f"{len(sources) - len(running)}/{len(sources)} sequences", refresh=False)
    finally:
        for gen in running:
            with contextlib.suppress(Exception):
                ray.cancel(gen)


def predict_to_folder(
    model,
    card: ModelCard,
    postprocess_params: Mapping[str, Any],
    input_path: Path,
    out: Path,
    options: PredictOptions = PredictOptions(),
    *,
    sources: list[SequenceSource] | None = None,
    collection: bool | None = None,
    use_ray: bool | None = None,
    address: str | None = None,
    overwrite: bool = False,
    model_uri: str = "the model",
    show_progress: bool = True,
    on_sequence: Callable[[SequenceSummary], None] | None = None,
) -> list[SequenceSummary]:
    """Predict every sequence at ``input_path`` and write CTC result folders under ``out``, atomically.

    Args:
        model, card, postprocess_params, options: see :func:`~celltune.platform.predict_one.predict_sequence`.
        input_path: see :func:`~celltune.platform.predict_inputs.find_sequences`.
        out: result folder (one sequence) or folder of ``<seq>_RES`` folders (a collection).
        sources, collection: the sequences and layout to use instead of discovering them at ``input_path``.
        use_ray: one Ray task per sequence; None = when there are 2+ sequences or ``address`` is given.
        address: Ray cluster address (default: a local Ray).
        overwrite: replace an existing non-empty ``out``.
        model_uri: how messages name the model.
        show_progress: a tqdm bar over all frames with an ETA.
        on_sequence: called with each sequence's summary once it is written (in completion order).

    Returns:
        One summary per sequence, in input order.

    Raises:
        UserInputError: bad input (see :func:`~celltune.platform.predict_inputs.find_sequences`,
            :func:`~celltune.platform.predict_one.predict_sequence`), a model that does not fit the input (see
            :func:`~celltune.platform.predict_checks.check_prediction`), or an existing non-empty ``out`` without
            ``overwrite``.
    """
    from tqdm.auto import tqdm

    from celltune.trainables.inference import resolve_device

    out = Path(out)
    check_output(out, overwrite)
    if sources is None:
        sources, collection = find_sequences(input_path)
    elif collection is None:
        collection = len(sources) > 1
    target = out.resolve()
    for path in {Path(input_path), *(s.path for s in sources)}:
        if path.resolve() == target or target in path.resolve().parents:
            raise UserInputError(f"{out}: the output folder holds the input {path}; choose another --out")
    if not collection and len(sources) != 1:
        raise ValueError("a single-sequence layout needs exactly one source")
    resolve_device(options.device)
    probes = {s.name: s.probe() for s in sources}
    # Once, for every sequence, before any inference; the sequences' own code trusts it.
    check_prediction(model, card, postprocess_params, options, [(s.where, probes[s.name].ndim) for s in sources],
                     model_uri)
    if use_ray is None:
        use_ray = len(sources) > 1 or address is not None

    created = missing_folders(out.parent)  # removed again when nothing is written
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(out)
        staging = default_permissions(Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-",
                                                            dir=out.parent)))
    except OSError as exc:
        remove_empty_folders(created)
        raise UserInputError(f"{out}: cannot write the results there ({exc.strerror or exc})") from None
    summaries: dict[str, SequenceSummary] = {}
    total = sum(p.num_frames for p in probes.values())

    def write(outcome: SequenceOutcome) -> None:
        folder = staging / (_result_name(by_name[outcome.name]) if collection else "result")
        write_ctc_result(folder, outcome.result.masks, outcome.result.tracks, digits=outcome.digits)
        final = out / folder.name if collection else out
        summary = SequenceSummary(outcome.name, final, outcome.frames, outcome.cells, outcome.tracks,
                                  outcome.divisions, outcome.seconds, outcome.timings)
        summaries[outcome.name] = summary
        logger.info("%s", summary.line())
        if on_sequence is not None:
            on_sequence(summary)

    by_name = {s.name: s for s in sources}
    try:
        if use_ray:  # before the progress bar, whose ETA should not include Ray's start
            from celltune.data_prep.ray_session import ensure_ray

            ensure_ray(address)
        with tqdm(total=total, desc="predicting", unit="frame", disable=None if show_progress else True,
                  dynamic_ncols=True) as bar:
            if use_ray:
                _run_in_ray(model, card, postprocess_params, sources, options, bar, write)
            else:
                for source in sources:
                    bar.set_postfix_str(source.name, refresh=False)
                    for event, payload in iter_predict_sequence(model, card, postprocess_params, source,
                                                                options):
                        if event == "predict":
                            bar.set_postfix_str(source.name, refresh=False)
                            bar.update(payload)
                        elif event == "read":
                            bar.set_postfix_str(f"{source.name}: reading", refresh=False)
                        elif event == "done":
                            write(payload)
        produced = staging if collection else staging / "result"
        _replace(produced, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        remove_empty_folders(created)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [summaries[s.name] for s in sources]


_STAGING_PID = re.compile(r"\.tmp-(\d+)-")


def remove_abandoned_staging(out: Path) -> list[Path]:
    """Remove the hidden staging folders of earlier predictions into ``out`` whose process is gone (a killed
    run cannot clean up after itself); folders of a live process, or of unknown owner, are left alone."""
    removed = []
    for folder in out.parent.glob(f".{out.name}.tmp-*"):
        match = _STAGING_PID.search(folder.name[len(out.name) + 1:])
        if match is None or not folder.is_dir() or _alive(int(match.group(1))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("removed %s, left by an interrupted prediction", folder)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _replace(produced: Path, out: Path) -> None:
    """Put ``produced`` at ``out`` in one rename; an existing ``out`` (overwrite was checked) is removed after."""
    old = None
    if out.exists() or out.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(produced, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
