"""`celltune data prep`: convert CTC datasets into celltune stores with Ray, incrementally and atomically.

Each (dataset, sequence) is converted by one Ray task (largest first, so two cores stay busy to the end).
A dataset's store is built in ``OUT/.<DS>.zarr.tmp-<hex>``, its ``complete`` marker written last, and then
renamed to ``OUT/<DS>.zarr``; on any error or interrupt the temporary folders of the run are removed, so a
store either is complete or does not exist. A store whose fingerprint (conversion parameters plus the
path, size and sha256 of every source file) matches the sources is skipped. Finally ``index.parquet`` is
rebuilt from every complete store in OUT.

With ``address`` (a Ray cluster), OUT must be a folder every node sees at the same path (shared storage),
and celltune must be installed on the nodes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celltune.data_prep import index as index_mod
from celltune.data_prep import store_format as sf
from celltune.data_prep.common import UserInputError, missing_folders, remove_empty_folders
from celltune.data_prep.convert import SequenceResult, celltune_version, conversion_params, convert_sequence
from celltune.data_prep.ctc_layout import DatasetLayout, SequenceLayout, discover
from celltune.data_prep.tiff_io import FileRecord, checksum, read_bytes
from celltune.data_prep.tracks import parse_man_track

logger = logging.getLogger(__name__)

_PROGRESS_INTERVAL = 0.25  # seconds between progress messages from a task


@dataclass
class PrepReport:
    """What a prep run did; :meth:`summary` is what the CLI prints."""

    out_dir: Path
    converted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    sequences: list[dict[str, Any]] = field(default_factory=list)  # dataset, sequence, frames, seconds, finished
    index_rows: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = []
        for row in self.sequences:
            lines.append(f"  converted {row['dataset']}/{row['sequence']}: {row['frames']} frames "
                         f"in {row['seconds']:.1f} s (done at {row['finished']:.1f} s)")
        for name in self.skipped:
            lines.append(f"  up to date {name}")
        head = (f"prep: {len(self.converted)} converted, {len(self.skipped)} up to date, "
                f"{self.index_rows} index rows in {self.out_dir / sf.INDEX_FILE} ({self.seconds:.1f} s)")
        return "\n".join([head, *lines])


# ---------------------------------------------------------------------------------------------- fingerprint


def fingerprint(params: dict[str, Any], files: Sequence[FileRecord]) -> str:
    """sha256 over the conversion parameters and every source file's relative path, size and sha256."""
    blob = json.dumps({"params": params, "files": sorted([f.path, f.size, f.sha256] for f in files)},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _hash_files(layout: DatasetLayout) -> list[FileRecord]:
    """Checksum a dataset's source files (threads: hashlib and file reads release the GIL)."""
    def one(item: tuple[SequenceLayout, Path]) -> FileRecord:
        seq, path = item
        data = read_bytes(path, seq.rel(path))
        return FileRecord(seq.rel_to_dataset(path), len(data), checksum(data))

    items = [(seq, path) for seq in layout.sequences for path in seq.files()]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, items))


# ---------------------------------------------------------------------------------------------- ray task


class _Cancelled(Exception):
    pass


STOP_FILE = ".stop"  # in a dataset's unfinished store: its tasks stop (a file: workers write the store anyway)


def _convert_task(layout: SequenceLayout, store_dir: str) -> Iterator[tuple[str, Any]]:
    """Ray generator task: yields ``("progress", files)`` while converting, then ``("done", result)``, or
    ``("stopped", None)`` once the driver has put :data:`STOP_FILE` in ``store_dir``.

    The driver stops a failed or interrupted prep that way, not with ``ray.cancel``, which gives it no point after
    which every task has stopped writing (a task cancelled while queued can still start): each task looks for the
    file before it writes and after every file, and the driver deletes the store once every task has ended.

    A UserInputError is yielded as ``("error", message)`` so the driver re-raises the same one-line error
    (no RayTaskError wrapping). The conversion runs in a thread so progress can be yielded while it works.
    """
    stop_file, root = Path(store_dir) / STOP_FILE, Path(store_dir) / "zarr.json"

    def stopped() -> bool:  # the stop file, or no store at all (deleted after a second Ctrl-C cut the wait short)
        return stop_file.exists() or not root.exists()

    if stopped():
        yield ("stopped", None)
        return
    updates: queue.SimpleQueue[int] = queue.SimpleQueue()
    stop = threading.Event()

    def progress(n: int) -> None:
        if stop.is_set() or stopped():
            raise _Cancelled
        updates.put(n)

    def drain() -> int:
        total = 0
        while True:
            try:
                total += updates.get_nowait()
            except queue.Empty:
                return total

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(convert_sequence, layout, Path(store_dir), progress)
        try:
            while not future.done():
                concurrent.futures.wait([future], timeout=_PROGRESS_INTERVAL)
                n = drain()
                if n:
                    yield ("progress", n)
        finally:
            stop.set()  # cancelled or failed: make the conversion thread stop at its next file
        try:
            result = future.result()
        except UserInputError as exc:
            yield ("error", str(exc))
            return
        except _Cancelled:
            yield ("stopped", None)
            return
    n = drain()
    if n:
        yield ("progress", n)
    yield ("done", result)


# ---------------------------------------------------------------------------------------------- driver


@contextlib.contextmanager
def _lock(out_dir: Path) -> Iterator[None]:
    try:
        handle = open(out_dir / sf.LOCK_FILE, "a+")
    except OSError as exc:
        raise UserInputError(f"{out_dir}: cannot write in the output folder ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserInputError(f"{out_dir}: another `celltune data prep` is writing this folder") from None
        yield
    finally:
        handle.close()


def _check_targets(out_dir: Path, layouts: list[DatasetLayout]) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserInputError(f"{out_dir}: --out exists and is not a folder")
    for layout in layouts:
        target = sf.store_path(out_dir, layout.name)
        if target.exists() and not sf.is_celltune_store(target):
            raise UserInputError(f"{target}: exists and is not a celltune store (remove it or choose another --out)")


def _check_man_tracks(layouts: list[DatasetLayout]) -> None:
    """Parse every man_track.txt up front: a broken table fails before any conversion starts."""
    for layout in layouts:
        for seq in layout.sequences:
            if seq.man_track is not None:
                rel = seq.rel(seq.man_track)
                try:
                    text = read_bytes(seq.man_track, rel).decode("utf-8")
                except UnicodeDecodeError:
                    raise UserInputError(f"{rel}: not a text file") from None
                parse_man_track(text, rel, len(seq.raw))


def _remove_stale(out_dir: Path, dataset: str) -> None:
    """Remove temporary folders left by an interrupted earlier run (the lock says none is running)."""
    for prefix in (sf.tmp_prefix(dataset), f".{dataset}{sf.STORE_SUFFIX}.old-"):
        for path in out_dir.glob(f"{prefix}*"):
            logger.info("removing leftover %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _is_up_to_date(out_dir: Path, layout: DatasetLayout, params: dict[str, Any]) -> bool:
    target = sf.store_path(out_dir, layout.name)
    attrs = sf.store_attrs(target)
    if not attrs or attrs.get("complete") is not True or attrs.get("format_version") != sf.FORMAT_VERSION:
        return False
    if attrs.get("params") != params:
        return False
    return attrs.get("fingerprint") == fingerprint(params, _hash_files(layout))


def _root_attrs(dataset: str, complete: bool, **extra: Any) -> dict[str, Any]:
    return {sf.ATTRS_KEY: {"kind": sf.STORE_KIND, "format_version": sf.FORMAT_VERSION, "dataset": dataset,
                           **extra, "complete": complete}}


def _finalize(out_dir: Path, layout: DatasetLayout, tmp: Path, results: list[SequenceResult]) -> None:
    """Write the root attributes (``complete`` last) and move the store into place."""
    import zarr

    results = sorted(results, key=lambda r: r.sequence)
    ndims = {r.attrs["ndim"] for r in results}
    if len(ndims) > 1:
        desc = ", ".join(f"{r.sequence} is {r.attrs['ndim']}D" for r in results)
        raise UserInputError(f"{layout.name}: sequences mix 2D and 3D frames ({desc})")
    params = conversion_params(layout.name)
    files = [f for r in results for f in r.files]
    attrs = _root_attrs(
        layout.name, True, ndim=ndims.pop(), sequences=[r.sequence for r in results], params=params,
        fingerprint=fingerprint(params, files), celltune_version=celltune_version(),
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    zarr.open_group(zarr.storage.LocalStore(tmp), mode="r+").update_attributes(attrs)
    target = sf.store_path(out_dir, layout.name)
    if target.exists():
        old = out_dir / f".{layout.name}{sf.STORE_SUFFIX}.old-{secrets.token_hex(4)}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


def _sequence_cost(seq: SequenceLayout) -> float:
    """Rough seconds of work, to start the longest conversions first: decoding grows with the file bytes,
    and every SEG frame adds its targets (about 25 ms for a 512x512 frame, the U-Net weight map most)."""
    return 3e-8 * sum(p.stat().st_size for p in seq.files()) + 0.025 * (len(seq.gt_seg) + len(seq.st_seg))


def _run_tasks(out_dir: Path, layouts: list[DatasetLayout], show_progress: bool, report: PrepReport) -> None:
    import ray
    import zarr
    from tqdm import tqdm

    from celltune.data_prep.ray_session import task_events

    task = ray.remote(num_cpus=1, max_retries=0)(_convert_task)
    tmp_dirs: dict[str, Path] = {}
    pending_by_dataset: dict[str, int] = {}
    results: dict[str, list[SequenceResult]] = {}
    running: dict[Any, SequenceLayout] = {}
    by_name = {layout.name: layout for layout in layouts}
    t_start = time.perf_counter()
    success = False
    try:
        for layout in layouts:
            tmp = out_dir / f"{sf.tmp_prefix(layout.name)}{secrets.token_hex(4)}"
            zarr.create_group(zarr.storage.LocalStore(tmp), attributes=_root_attrs(layout.name, False))
            tmp_dirs[layout.name] = tmp
            pending_by_dataset[layout.name] = len(layout.sequences)
            results[layout.name] = []
        sequences = sorted((s for layout in layouts for s in layout.sequences), key=_sequence_cost, reverse=True)
        total_files = sum(len(s.files()) for s in sequences)
        with tqdm(total=total_files, unit="file", desc="prep", disable=None if show_progress else True,
                  dynamic_ncols=True) as bar:
            for seq in sequences:
                gen = task.remote(seq, str(tmp_dirs[seq.dataset]))
                running[gen] = seq
            for gen, seq, kind, payload in task_events(running, lambda s: f"converting {s.dataset}/{s.sequence}"):
                if kind == "progress":
                    bar.update(payload)
                elif kind == "error":
                    raise UserInputError(payload)
                elif kind == "done":
                    del running[gen]
                    report.sequences.append({"dataset": seq.dataset, "sequence": seq.sequence,
                                             "frames": len(seq.raw), "seconds": payload.seconds,
                                             "finished": time.perf_counter() - t_start})
                    results[seq.dataset].append(payload)
                    pending_by_dataset[seq.dataset] -= 1
                    if pending_by_dataset[seq.dataset] == 0:
                        _finalize(out_dir, by_name[seq.dataset], tmp_dirs[seq.dataset], results[seq.dataset])
                        del tmp_dirs[seq.dataset]
                        report.converted.append(seq.dataset)
                        bar.set_postfix_str(f"done {', '.join(report.converted)}", refresh=False)
        success = True
    finally:
        if not success:
            try:
                for tmp in tmp_dirs.values():  # every task stops at its next file, or before it starts
                    with contextlib.suppress(OSError):
                        (tmp / STOP_FILE).touch()
                for gen in running:  # wait until every task has ended before deleting what they wrote
                    with contextlib.suppress(Exception):
                        for ref in gen:
                            with contextlib.suppress(Exception):  # an error is the task's end: the loop ends
                                ray.get(ref)
            finally:  # a second Ctrl-C ends the wait, not the clean-up
                for tmp in tmp_dirs.values():
                    shutil.rmtree(tmp, ignore_errors=True)


def prep_datasets(
    src: Path | str,
    out: Path | str,
    datasets: Sequence[str] | None = None,
    address: str | None = None,
    force: bool = False,
    seed: int = 0,
    show_progress: bool = True,
) -> PrepReport:
    """Convert CTC datasets in ``src`` into ``out/<DS>.zarr`` stores and rebuild ``out/index.parquet``.

    Args:
        src: folder holding CTC training datasets (``<DS>/01``, ``<DS>/01_GT``, ...).
        out: output folder (created if missing).
        datasets: dataset folder names to convert (default: every dataset found in ``src``).
        address: Ray cluster address (default: join a running Ray or start a local one).
        force: rebuild stores even when they are up to date.
        seed: seed of the train/val splits written to the index.
        show_progress: show a progress bar over the files read (tqdm, with ETA).

    Returns:
        A :class:`PrepReport`.

    Raises:
        UserInputError: bad input (one line naming the file and the problem); no store is left behind for
            a dataset that failed.
    """
    t0 = time.perf_counter()
    src, out_dir = Path(src), Path(out)
    layouts = discover(src, list(datasets) if datasets is not None else None)
    _check_targets(out_dir, layouts)
    _check_man_tracks(layouts)
    created = missing_folders(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty_folders(created)
        raise UserInputError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    report = PrepReport(out_dir)
    try:
        _prep_locked(out_dir, layouts, report, force=force, address=address, show_progress=show_progress, seed=seed)
    except BaseException:
        # folders this run made and left with nothing but its lock are removed: a failed prep leaves no trace
        if created and out_dir.is_dir() and {p.name for p in out_dir.iterdir()} <= {sf.LOCK_FILE}:
            shutil.rmtree(out_dir, ignore_errors=True)
            remove_empty_folders(created)
        raise
    report.seconds = time.perf_counter() - t0
    return report


def _prep_locked(out_dir: Path, layouts: list[DatasetLayout], report: PrepReport, *, force: bool,
                 address: str | None, show_progress: bool, seed: int) -> None:
    with _lock(out_dir):
        todo = []
        for layout in layouts:
            _remove_stale(out_dir, layout.name)
            if not force and _is_up_to_date(out_dir, layout, conversion_params(layout.name)):
                report.skipped.append(layout.name)
            else:
                todo.append(layout)
        if todo:
            import ray

            from celltune.data_prep.ray_session import ensure_ray

            owns_ray = not ray.is_initialized()
            ensure_ray(address)
            try:
                _run_tasks(out_dir, todo, show_progress, report)
            finally:
                if owns_ray:
                    ray.shutdown()
        table = index_mod.build_index(out_dir, seed=seed)
        index_mod.write_index(table, out_dir)
        report.index_rows = table.num_rows
