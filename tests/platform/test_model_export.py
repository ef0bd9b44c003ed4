"""`celltune models export`: a small untrained U-Net exported as ONNX and as a bioimage.io package.

The ONNX graph is run by onnxruntime on non-square batches whose sides are multiples of the size multiple (16)
but not powers of two, and must equal PyTorch's probabilities to 1e-4 (absolute); the bioimage.io zip must pass
``bioimageio.spec`` validation (and ``bioimageio.core``'s test where that package is installed). Bad input is one
line with exit code 2 and leaves nothing behind. Each format is exported once per module (torch.export is the slow
part: several seconds per export on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from celltune.platform.cli import main
from celltune.trainables.architectures import build_model
from celltune.trainables.model_card import CARD_FILE
from celltune.trainables.target_kinds import DEFAULT_POSTPROCESS_PARAMS

ATOL = 1e-4  # onnxruntime vs PyTorch, on probabilities in [0, 1]
PER_DATASET = {"Synth-Round": {"min_area": 5, "hole_area": 0}}


def _checkpoint(folder: Path, *, normalization: str = "minmax", name: str = "unet", **options) -> Path:
    """A checkpoint folder of an untrained network (no training needed to compare runtimes)."""
    torch.manual_seed(0)
    model = build_model(name, **(options or {"width": 8, "norm": "group"}))
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "best_model.safetensors"))
    card = {"model": {**model.celltune_config, "target_kind": model.spec.target_kind,
                      "size_multiple": model.spec.size_multiple},
            "postprocess": DEFAULT_POSTPROCESS_PARAMS[model.spec.target_kind], "postprocess_per_dataset": PER_DATASET,
            "normalization": normalization, "scale": {"Synth-Round": 0.5}, "best": {"seg_mean": 0.4}}
    (folder / CARD_FILE).write_text(json.dumps(card))
    return folder


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is absent
        return False


def _export(*argv: str) -> int:
    return main(["models", "export", *argv])


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("onnx")
    checkpoint = _checkpoint(root / "ckpt")
    assert _export(str(checkpoint), "--format", "onnx", "--out", str(root / "out")) == 0
    return root / "out", checkpoint


@pytest.fixture(scope="module")
def bioimageio_zip(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("bioimageio.spec")
    root = tmp_path_factory.mktemp("bioimageio")
    checkpoint = _checkpoint(root / "ckpt", normalization="percentile")
    assert _export(str(checkpoint), "--format", "bioimageio", "--out", str(root / "out")) == 0
    zips = list((root / "out").iterdir())
    assert [p.name for p in zips] == ["ckpt.bioimageio.zip"]
    return zips[0], checkpoint


def _probabilities(checkpoint: Path, x: np.ndarray) -> np.ndarray:
    from celltune.platform.model_registry import load_model

    with torch.no_grad():
        return torch.softmax(load_model(str(checkpoint)).model(torch.from_numpy(x)), dim=1).numpy()


def _session(path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_onnxruntime_equals_pytorch_on_odd_valid_sizes(onnx_export):
    out, checkpoint = onnx_export
    assert sorted(p.name for p in out.iterdir()) == ["celltune_export.json", "model.onnx"]
    session = _session(out / "model.onnx")
    rng = np.random.default_rng(1)
    # batch 1 and 3, non-square, sides multiples of 16 but not powers of two (48, 80, 112, 208)
    for shape in [(1, 1, 48, 80), (3, 1, 112, 16), (2, 1, 80, 208)]:
        x = rng.random(shape, dtype=np.float32)
        got = session.run(None, {"input": x})[0]
        expected = _probabilities(checkpoint, x)
        assert got.shape == (shape[0], 3, *shape[2:])
        np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)  # probabilities, not logits


def test_onnx_carries_the_contract(onnx_export):
    import onnx

    out, _ = onnx_export
    graph = onnx.load(str(out / "model.onnx"))
    contract = json.loads({p.key: p.value for p in graph.metadata_props}["celltune"])
    written = json.loads((out / "celltune_export.json").read_text())
    assert {k: v for k, v in written.items() if k != "onnxruntime_max_abs_diff"} == contract
    assert written["onnxruntime_max_abs_diff"] <= ATOL
    opset = next(o.version for o in graph.opset_import if o.domain == "")
    assert contract["opset"] == opset >= 18
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 1 and all(dims[i].dim_param for i in (0, 2, 3))  # dynamic B, H, W
    assert contract["input"]["size_multiple"] == 16 and contract["input"]["normalization"] == "minmax"
    assert contract["input"]["scale"] == {"Synth-Round": 0.5}
    assert contract["output"]["channels"] == ["background", "boundary", "cell"]
    assert contract["output"]["activation"] == "softmax"
    assert contract["postprocess"] == DEFAULT_POSTPROCESS_PARAMS["tertiary"]
    assert contract["postprocess_per_dataset"] == PER_DATASET


def test_bioimageio_package_passes_the_spec_validator(bioimageio_zip):
    from bioimageio.spec import InvalidDescr, load_description

    package, _ = bioimageio_zip
    description = load_description(package, perform_io_checks=True)
    assert not isinstance(description, InvalidDescr), description.validation_summary.format()
    summary = description.validation_summary
    assert summary.status in ("valid-format", "passed")
    assert not [e for detail in summary.details for e in detail.errors]
    assert str(description.format_version).startswith("0.5.")
    assert description.weights.onnx is not None and description.weights.pytorch_state_dict is not None
    assert [p.id for p in description.inputs[0].preprocessing if p.id != "ensure_dtype"] == ["scale_range", "clip"]
    config = description.config.model_dump()["celltune"]
    assert config["postprocess_per_dataset"] == PER_DATASET and config["input"]["normalization"] == "percentile"
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        readme = archive.read("README.md").decode()
    assert {"rdf.yaml", "model.onnx", "weights.pt", "test_input.npy", "test_output.npy"} <= names
    assert "min_area" in readme and "Synth-Round" in readme and "## Validation" in readme


def test_bioimageio_test_tensors_are_the_onnx_output_of_the_normalized_input(bioimageio_zip, tmp_path):
    """What a bioimage.io runtime does, by hand: 1-99 % percentile scaling, clip, the ONNX weights."""
    package, checkpoint = bioimageio_zip
    with zipfile.ZipFile(package) as archive:
        archive.extractall(tmp_path)
    raw = np.load(tmp_path / "test_input.npy")
    low, high = np.percentile(raw, [1, 99])
    x = np.clip((raw - low) / (high - low + 1e-6), 0, 1).astype(np.float32)
    got = _session(tmp_path / "model.onnx").run(None, {"input": x})[0]
    np.testing.assert_allclose(got, np.load(tmp_path / "test_output.npy"), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got, _probabilities(checkpoint, x), rtol=0, atol=ATOL)


@pytest.mark.slow
@pytest.mark.skipif(not _installed("bioimageio.core"), reason="bioimageio.core is not in the export extra (its "
                    "release pins bioimageio.spec 0.5.12, which fails under pydantic 2.14)")
def test_bioimageio_core_reproduces_the_test_outputs_with_both_weights(bioimageio_zip):
    from bioimageio.core import test_model

    summary = test_model(bioimageio_zip[0])
    assert summary.status == "passed", summary.format()


@pytest.mark.parametrize("case", ["unknown model", "mistyped format", "existing output", "temporal model"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "models" / "ckpt")
    out = tmp_path / "exports" / "out"
    argv = [str(checkpoint), "--format", "onnx", "--out", str(out)]
    expected = {"unknown model": "not a celltune model folder", "mistyped format": "did you mean 'onnx'?",
                "existing output": "already exists", "temporal model": "temporal model"}[case]
    if case == "unknown model":
        (tmp_path / "models" / "empty").mkdir()
        argv[0] = str(tmp_path / "models" / "empty")
    elif case == "mistyped format":
        argv[2] = "onx"
    elif case == "existing output":
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
    else:
        argv[0] = str(_checkpoint(tmp_path / "models" / "temporal", name="convlstm_unet", time_window=3, width=8))
    assert _export(*argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("celltune: error:") and expected in lines[0], err
    if case == "existing output":
        assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
        assert [p.name for p in out.parent.iterdir()] == ["out"]
    else:
        assert not out.parent.exists()


def test_a_failed_export_leaves_no_folder_behind(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from celltune.platform import model_export

    def broken(network, multiple, path, metadata):
        Path(path).write_bytes(b"half a graph")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(model_export, "_export_onnx", broken)
    checkpoint = _checkpoint(tmp_path / "ckpt")
    out = tmp_path / "exports" / "out"
    assert _export(str(checkpoint), "--format", "onnx", "--out", str(out)) == 1
    assert "exporter crashed" in capsys.readouterr().err
    assert list(out.parent.iterdir()) == []
