"""Shared fixtures: the real CTC data (fail in CI, skip elsewhere when absent) and one Ray per session."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REAL_DATASETS = ("DIC-C2DH-HeLa", "Fluo-N2DH-GOWT1", "Fluo-N2DH-SIM+")


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def ctc_data_dir() -> Path:
    """Folder with the real CTC training datasets, from $CELLTUNE_CTC_DATA."""
    raw = os.environ.get("CELLTUNE_CTC_DATA", "")
    path = Path(raw) if raw else None
    if path is None or not all((path / name).is_dir() for name in REAL_DATASETS):
        message = f"real CTC data not found (CELLTUNE_CTC_DATA={raw!r}); expected {', '.join(REAL_DATASETS)}"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def _link_ctc_head(source: Path, sequence: str, last_frame: int, target: Path) -> Path:
    """The first ``last_frame + 1`` frames of one sequence of CTC dataset ``source`` as a dataset of its own
    under ``target`` (same folder name): frames and GT files linked, not copied; man_track.txt cut there."""
    folder = target / source.name
    for sub in (sequence, f"{sequence}_GT/SEG", f"{sequence}_GT/TRA"):
        (folder / sub).mkdir(parents=True)
    for path in (source / sequence).glob("t*.tif"):
        if int(path.stem[1:]) <= last_frame:
            (folder / sequence / path.name).symlink_to(path)
    for kind, prefix in (("SEG", "man_seg"), ("TRA", "man_track")):
        for path in (source / f"{sequence}_GT" / kind).glob(f"{prefix}[0-9]*.tif"):
            if int(path.stem.removeprefix(prefix)) <= last_frame:
                (folder / f"{sequence}_GT" / kind / path.name).symlink_to(path)
    rows = []
    for line in (source / f"{sequence}_GT" / "TRA" / "man_track.txt").read_text().split("\n"):
        if line.strip():
            label, begin, end, parent = map(int, line.split())
            if begin <= last_frame:
                rows.append(f"{label} {begin} {min(end, last_frame)} {parent}")
    (folder / f"{sequence}_GT" / "TRA" / "man_track.txt").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="session")
def ctc_head():
    """``ctc_head(source, sequence, last_frame, target)``: a short real dataset linked from the shared data."""
    return _link_ctc_head


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (each start costs seconds and ~0.5 GB)."""
    import ray

    from celltune.data_prep.ray_session import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_stores(tmp_path_factory) -> Path:
    """The demo's two synthetic datasets, generated and prepared once per session; returns the stores folder."""
    from celltune.platform.demo import DEMO_DATASETS, DemoPaths, run_demo

    root = tmp_path_factory.mktemp("demo")
    run_demo(root, show_progress=False)
    paths = DemoPaths(root)
    assert all((paths.stores / f"{spec['name']}.zarr").is_dir() for spec in DEMO_DATASETS)
    return paths.stores


@pytest.fixture(scope="session")
def real_out(ctc_data_dir: Path, tmp_path_factory, ray_session) -> tuple[Path, float]:
    """The three real datasets converted once for the whole test session (about 200 MB of TIFFs): the stores
    folder and the seconds it took."""
    import time

    from celltune.data_prep.prep import prep_datasets

    out = tmp_path_factory.mktemp("real_stores")
    start = time.perf_counter()
    report = prep_datasets(ctc_data_dir, out, datasets=list(REAL_DATASETS), show_progress=False)
    seconds = time.perf_counter() - start
    assert sorted(report.converted) == sorted(REAL_DATASETS)
    return out, seconds


@dataclass
class TrainedInTest:
    """What a test-sized training run told its observer, and where its last checkpoint was copied."""

    result: object
    checkpoint: Path
    losses: list[float] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    examples: dict[str, tuple] = field(default_factory=dict)


@pytest.fixture
def train_in_test(tmp_path: Path):
    """Train a config in this process (no Ray, no MLflow), recording losses, the last evaluation's scores and
    examples, and copying the last checkpoint to ``tmp_path/checkpoint``."""
    import shutil

    from tqdm import tqdm

    from celltune.trainables.train_loop import WorkerContext, train

    def run(config) -> TrainedInTest:
        run = TrainedInTest(result=None, checkpoint=tmp_path / "checkpoint")

        class Observer:
            def on_start(self, config, model_config): ...
            def on_steps(self, records): run.losses.extend(v["loss/total"] for _, v in records if "loss/total" in v)
            def on_end(self, best): ...

            def on_evaluation(self, step, epoch, metrics, examples):
                run.scores.update(metrics)
                run.examples.update(examples)

        def keep(metrics, checkpoint):
            if checkpoint is not None:
                shutil.rmtree(run.checkpoint, ignore_errors=True)
                shutil.copytree(checkpoint, run.checkpoint)

        context = WorkerContext(report=keep, progress_bar=lambda total, initial, desc: tqdm(disable=True))
        run.result = train(config, context, Observer())
        return run

    return run
