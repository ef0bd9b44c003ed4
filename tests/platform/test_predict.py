"""Prediction into CTC result folders: a tiny U-Net trained for a few seconds on synthetic cells predicts
held-out synthetic sequences from CTC folders, TIFF stacks and zarr stores, in 2D and 3D, in this process
and as Ray tasks; results are checked against the same pipeline composed by hand and against py-ctcmetrics.

The helpers at the top (a trained checkpoint, synthetic datasets) are shared with test_cli_predict.py and are
built once per test session under pytest's base temp folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from celltune.data_prep.common import UserInputError
from celltune.platform.cell_tracker import track_sequence
from celltune.platform.ctc_results import read_ctc_result
from celltune.platform.predict import predict_to_folder
from celltune.platform.predict_checks import check_model_fits, model_ndims
from celltune.platform.predict_inputs import SequenceSource, find_sequences
from celltune.platform.predict_one import frames_as_tracks, predict_sequence
from celltune.platform.predict_options import PredictOptions
from celltune.trainables.model_card import ModelCard

TRAIN_DATASET = "Synth-Train"
TEST_DATASET = "Synth-SIM+"  # a '+' like Fluo-N2DH-SIM+, which MLflow metric names cannot hold
MIN_AREA = 12


# ------------------------------------------------------------------------------------------ shared helpers


def _shared_dir(tmp_path_factory, name: str) -> tuple[Path, bool]:
    """A folder under the session's base temp that both test files reuse; True when already built."""
    path = tmp_path_factory.getbasetemp() / "celltune-predict-fixtures" / name
    return path, path.is_dir() and (path / ".done").is_file()


def build_checkpoint(tmp_path_factory) -> Path:
    """A U-Net (width 8, GroupNorm) trained for 60 steps on 48x48 crops of one synthetic sequence, saved in
    the training checkpoint format (best_model.safetensors + celltune_model.json); about 5 s on 2 cores."""
    import torch
    from safetensors.torch import save_file

    from celltune.data_prep.stats import IntensityStats
    from celltune.data_prep.synth import SynthSpec, generate_dataset
    from celltune.data_prep.targets import tertiary_target
    from celltune.trainables.architectures import build_model
    from celltune.trainables.config import TrainConfig
    from celltune.trainables.data import normalize
    from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS

    folder, done = _shared_dir(tmp_path_factory, "checkpoint")
    if done:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    data = generate_dataset(folder.parent / "train-data", SynthSpec(name=TRAIN_DATASET, sequences=1, frames=8,
                                                                     size=96, cells=6, seed=3), show_progress=False)
    raws = [tifffile.imread(p) for p in sorted((data / "01").glob("t*.tif"))]
    labels = [tifffile.imread(p) for p in sorted((data / "01_ST" / "SEG").glob("man_seg*.tif"))]
    stats = IntensityStats(raws[0].dtype)
    for raw in raws:
        stats.add(raw)
    x = torch.from_numpy(np.stack([normalize(r, stats.result(), "minmax") for r in raws]))[:, None]
    y = torch.from_numpy(np.stack([tertiary_target(lab, 2, 2) for lab in labels]).astype(np.int64))
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    options = {"width": 8, "norm": "group"}
    model = build_model("unet", **options)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(60):
        index = torch.randint(0, len(x), (8,), generator=generator)
        y0, x0 = torch.randint(0, 96 - 48 + 1, (2,), generator=generator).tolist()
        logits = model(x[index, :, y0:y0 + 48, x0:x0 + 48])
        loss = torch.nn.functional.cross_entropy(logits, y[index, y0:y0 + 48, x0:x0 + 48])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()},
              str(folder / "best_model.safetensors"))
    config = TrainConfig(data={"stores": [str(folder.parent / f"{TRAIN_DATASET}.zarr")]},
                         model={"name": "unet", "options": options})
    description = {
        "model": {**model.celltune_config, "target_kind": "tertiary", "size_multiple": model.spec.size_multiple},
        "postprocess": {**DEFAULT_POSTPROCESS_PARAMS["tertiary"], "min_area": MIN_AREA},
        "postprocess_per_dataset": {"Synth-Huge": {"min_area": 100_000, "hole_area": 32, "grow": 0}},
        "normalization": "minmax",
        "train_config": config.model_dump(mode="json"),
        "step": 60, "epoch": 1, "best": {"seg_mean": 0.5},
    }
    (folder / "celltune_model.json").write_text(json.dumps(description, indent=2))
    (folder / ".done").touch()
    return folder


def variant_checkpoint(checkpoint: Path, target: Path, **changes) -> Path:
    """A copy of ``checkpoint`` whose description has ``changes`` applied (top-level keys; ``stores`` sets the
    training stores)."""
    shutil.copytree(checkpoint, target)
    description = json.loads((target / "celltune_model.json").read_text())
    stores = changes.pop("stores", None)
    if stores is not None:
        description["train_config"]["data"]["stores"] = stores
    description.update(changes)
    (target / "celltune_model.json").write_text(json.dumps(description))
    return target


def build_test_data(tmp_path_factory) -> Path:
    """Held-out synthetic CTC dataset ``Synth-SIM+``: sequences 01 and 02, 6 frames of 80x80, GT TRA and SEG."""
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    folder, done = _shared_dir(tmp_path_factory, "test-data")
    if not done:
        shutil.rmtree(folder, ignore_errors=True)
        generate_dataset(folder, SynthSpec(name=TEST_DATASET, sequences=2, frames=6, size=80, cells=5, seed=7,
                                           gt_every=2), show_progress=False)
        (folder / ".done").touch()
    return folder / TEST_DATASET


def load(checkpoint: Path):
    from celltune.platform.model_registry import load_model

    return load_model(str(checkpoint))


def ctc_valid(folder: Path) -> int:
    """py-ctcmetrics' own validity check of a result folder (1 = valid)."""
    from ctc_metrics import validate_sequence

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return validate_sequence(str(folder), threads=1)["Valid"]


@contextlib.contextmanager
def one_torch_thread():
    """One intra-op thread: on 2 shared cores, OpenMP threads spinning against other processes make the tiny
    convolutions here 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load(checkpoint)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_test_data(tmp_path_factory)


def _by_hand(loaded, frames: list[np.ndarray], min_area: int = MIN_AREA) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline composed from its parts: min-max over the whole sequence, network, post-processing, tracker."""
    from celltune.trainables.inference import predict_probabilities
    from celltune.trainables.target_kinds import postprocess

    low = float(min(f.min() for f in frames))
    high = float(max(f.max() for f in frames))
    labels = []
    for frame in frames:
        image = ((frame.astype(np.float32) - np.float32(low)) / np.float32(high - low)).astype(np.float32)
        slices = image.reshape((-1, *image.shape[-2:]))
        probs = predict_probabilities(loaded.model, slices, size_multiple=16, activation="softmax")
        probs = np.moveaxis(probs, 1, 0).reshape((3, *image.shape))
        labels.append(postprocess("tertiary", probs, min_area=min_area, hole_area=32, grow=0))
    result = track_sequence(labels)
    return result.masks, result.tracks


def _raw(folder: Path) -> list[np.ndarray]:
    return [tifffile.imread(p) for p in sorted(folder.glob("t*.tif"))]


# ------------------------------------------------------------------------------------------ tests


def test_sequence_folder_gives_a_valid_result_equal_to_the_pipeline_by_hand(loaded, dataset, tmp_path):
    out = tmp_path / "01_RES"
    (summary,) = predict_to_folder(loaded.model, loaded.card, loaded.card.postprocess_params(), dataset / "01", out,
                                   show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == [f"mask{t:03d}.tif" for t in range(6)] + ["res_track.txt"]
    result = read_ctc_result(out)  # re-checks masks against res_track.txt (CTC rules)
    masks, tracks = _by_hand(loaded, _raw(dataset / "01"))
    np.testing.assert_array_equal(result.masks, masks)
    np.testing.assert_array_equal(result.tracks, tracks)
    assert ctc_valid(out) == 1
    assert summary.frames == 6 and summary.tracks == len(tracks) and summary.folder == out
    assert summary.cells == sum(len(np.unique(m)) - 1 for m in masks) > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_four_digit_frames_give_four_digit_masks(loaded, dataset, tmp_path):
    seq = tmp_path / "07"
    seq.mkdir()
    for t, path in enumerate(sorted((dataset / "01").glob("t*.tif"))[:3]):
        shutil.copy(path, seq / f"t{t:04d}.tif")
    out = tmp_path / "07_RES"
    predict_to_folder(loaded.model, loaded.card, {"min_area": MIN_AREA}, seq, out, show_progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["mask0000.tif", "mask0001.tif", "mask0002.tif", "res_track.txt"]
    assert ctc_valid(out) == 1


def test_multipage_stack_equals_the_sequence_folder(loaded, dataset, tmp_path):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack(_raw(dataset / "02")))
    sources, collection = find_sequences(stack)
    assert not collection and sources[0].kind == "tiff"
    predict_to_folder(loaded.model, loaded.card, {"min_area": MIN_AREA}, stack, tmp_path / "a",
                      show_progress=False)
    predict_to_folder(loaded.model, loaded.card, {"min_area": MIN_AREA}, dataset / "02", tmp_path / "b",
                      show_progress=False)
    a, b = read_ctc_result(tmp_path / "a"), read_ctc_result(tmp_path / "b")
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.tracks, b.tracks)


def test_3d_folder_and_imagej_hyperstack(loaded, tmp_path):
    from celltune.data_prep.synth import SynthSpec, generate_dataset

    data = generate_dataset(tmp_path, SynthSpec(name="Synth-3D", ndim=3, sequences=1, frames=3, size=64, depth=6,
                                                cells=4, seed=5), show_progress=False)
    frames = _raw(data / "01")
    assert frames[0].shape == (6, 64, 64)
    out = tmp_path / "01_RES"
    predict_to_folder(loaded.model, loaded.card, {"min_area": MIN_AREA}, data / "01", out,
                      show_progress=False)
    result = read_ctc_result(out)
    masks, tracks = _by_hand(loaded, frames)
    assert result.masks.shape == (3, 6, 64, 64)
    np.testing.assert_array_equal(result.masks, masks)
    np.testing.assert_array_equal(result.tracks, tracks)
    assert ctc_valid(out) == 1
    # The same volumes as one ImageJ hyperstack (T, Z, Y, X) give the same result.
    stack = tmp_path / "hyper.tif"
    tifffile.imwrite(stack, np.stack(frames), imagej=True, metadata={"axes": "TZYX"})
    predict_to_folder(loaded.model, loaded.card, {"min_area": MIN_AREA}, stack, tmp_path / "h",
                      show_progress=False)
    np.testing.assert_array_equal(read_ctc_result(tmp_path / "h").masks, masks)


def test_no_track_writes_one_frame_tracks_that_validate(loaded, dataset, tmp_path):
    out = tmp_path / "r"
    options = PredictOptions(track=False)
    (summary,) = predict_to_folder(loaded.model, loaded.card, {"min_area": MIN_AREA}, dataset / "01", out,
                                   options, show_progress=False)
    result = read_ctc_result(out)
    assert len(result.tracks) == summary.cells == summary.tracks
    assert (result.tracks[:, 1] == result.tracks[:, 2]).all() and (result.tracks[:, 3] == 0).all()
    assert ctc_valid(out) == 1


def test_frames_as_tracks_by_hand():
    a = np.array([[0, 3], [3, 0]], dtype=np.int32)  # one object (id 3) in frame 0
    b = np.array([[1, 0], [0, 2]], dtype=np.int32)  # two objects in frame 1
    result = frames_as_tracks([a, b])
    np.testing.assert_array_equal(result.masks, [[[0, 1], [1, 0]], [[2, 0], [0, 3]]])
    np.testing.assert_array_equal(result.tracks, [[1, 0, 0, 0], [2, 1, 1, 0], [3, 1, 1, 0]])


@pytest.mark.ray
def test_ray_tasks_equal_in_process_and_zarr_store_input(loaded, dataset, tmp_path, ray_session):
    from celltune.data_prep.prep import prep_datasets

    params = {"min_area": MIN_AREA}
    local = predict_to_folder(loaded.model, loaded.card, params, dataset, tmp_path / "local", use_ray=False,
                              show_progress=False)
    remote = predict_to_folder(loaded.model, loaded.card, params, dataset, tmp_path / "ray", use_ray=True,
                               show_progress=False)
    assert [s.name for s in local] == [s.name for s in remote] == ["01", "02"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["01_RES", "02_RES"]
    for seq in ("01", "02"):
        a, b = read_ctc_result(tmp_path / "local" / f"{seq}_RES"), read_ctc_result(tmp_path / "ray" / f"{seq}_RES")
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_array_equal(a.tracks, b.tracks)
    # A store prepared from the same dataset: its stored statistics equal those of the frames, so the same masks.
    prep_datasets(dataset.parent, tmp_path / "stores", datasets=[TEST_DATASET], show_progress=False)
    store = tmp_path / "stores" / f"{TEST_DATASET}.zarr"
    sources, collection = find_sequences(store)
    assert collection and [(s.name, s.kind) for s in sources] == [("01", "zarr"), ("02", "zarr")]
    predict_to_folder(loaded.model, loaded.card, params, store, tmp_path / "zarr", use_ray=True,
                      show_progress=False)
    for seq in ("01", "02"):
        np.testing.assert_array_equal(read_ctc_result(tmp_path / "zarr" / f"{seq}_RES").masks,
                                      read_ctc_result(tmp_path / "local" / f"{seq}_RES").masks)


def test_dataset_folder_is_a_collection_and_skips_gt_folders(dataset):
    sources, collection = find_sequences(dataset)
    assert collection and [(s.name, s.kind, len(s.frames), s.digits) for s in sources] == [
        ("01", "ctc", 6, 3), ("02", "ctc", 6, 3)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d.mkdir(), "no input frames"),
    (lambda d: (d.mkdir(), (d / "t000.tif").write_bytes(b"II*\x00garbage")), "t000.tif: .*TIFF"),
    (lambda d: (d.mkdir(), tifffile.imwrite(d / "t000.tif", np.zeros((8, 8), np.uint8)),
                tifffile.imwrite(d / "t002.tif", np.zeros((8, 8), np.uint8))), "t001.tif missing"),
    (lambda d: (d.mkdir(), tifffile.imwrite(d / "img.tif", np.zeros((8, 8), np.uint8))), "img.tif is not named"),
    (lambda d: None, "input not found"),
])
def test_bad_inputs_are_one_line_errors(loaded, tmp_path, make, message):
    source = tmp_path / "in"
    make(source)
    with pytest.raises(UserInputError, match=message) as info:
        predict_to_folder(loaded.model, loaded.card, {}, source, tmp_path / "out", show_progress=False)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_unreadable_frame_mid_sequence_leaves_nothing(loaded, dataset, tmp_path):
    seq = tmp_path / "01"
    shutil.copytree(dataset / "01", seq)
    (seq / "t004.tif").write_bytes((seq / "t004.tif").read_bytes()[:200])  # truncated
    with pytest.raises(UserInputError, match="t004.tif"):
        predict_to_folder(loaded.model, loaded.card, {}, seq, tmp_path / "out", show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01"]


def test_model_dimensions_from_training_data(tmp_path):
    from celltune.data_prep.store_format import STORE_KIND

    def description(*stores):
        return ModelCard.from_mapping({"model": {"name": "unet", "target_kind": "tertiary", "size_multiple": 16},
                                       "train_config": {"data": {"stores": [str(s) for s in stores]}}})

    assert model_ndims(description("/x/Fluo-N3DH-CE.zarr")) == {3}
    assert model_ndims(description("/x/DIC-C2DH-HeLa.zarr", "/x/Fluo-N2DL-HeLa.zarr")) == {2}
    assert model_ndims(description("/x/Fluo-N3DH-CE.zarr", "/x/PhC-C2DL-PSC.zarr")) == {2, 3}
    assert model_ndims(description("/x/Synth-Round.zarr")) is None  # name says nothing, store is gone
    store = tmp_path / "Synth-Vol.zarr"  # a store that still exists: its attributes decide
    store.mkdir()
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
        "celltune": {"kind": STORE_KIND, "ndim": 3}}}))
    assert model_ndims(description(store)) == {3}
    with pytest.raises(UserInputError, match="2D frames, but m was trained on 3D data only"):
        check_model_fits(description(store), 2, "in", "m")
    check_model_fits(description("/x/Synth-Round.zarr"), 3, "in", "m")  # unknown: allowed


def test_predict_sequence_reports_timings(loaded, dataset):
    (source,) = find_sequences(dataset / "01")[0]
    assert isinstance(source, SequenceSource)
    outcome = predict_sequence(loaded.model, loaded.card, {"min_area": MIN_AREA}, source)
    assert outcome.frames == 6 and outcome.digits == 3
    assert set(outcome.timings) == {"read", "inference", "postprocess", "tracking"}
    assert all(v >= 0 for v in outcome.timings.values())
    assert sum(outcome.timings.values()) <= outcome.seconds + 1e-6
