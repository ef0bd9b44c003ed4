"""Export a celltune model for use outside celltune: an ONNX graph, or a bioimage.io model package.

Both formats hold the same network, *with its output activation*: the graph maps a ``(B, 1, H, W)`` float32 frame,
normalized as the model card says, to per-class probabilities ``(B, C, H, W)`` (softmax over the classes for
``tertiary`` and ``binary``, a sigmoid per channel for ``mask_marker``), exactly what celltune's post-processing
takes, so a consumer needs no knowledge of the target kind to read the output. H and W may be any multiples of
the model's size multiple (16 for five-stage U-Nets), batch any size.

- ``onnx``: ``DIR/model.onnx`` (default opset of ``torch.onnx.export``'s ``torch.export``-based exporter, weights
  inside the file) whose ``metadata_props["celltune"]`` holds the contract below as JSON, and the same contract
  as ``DIR/celltune_export.json``. Every export is checked by running onnxruntime against PyTorch.
- ``bioimageio``: ``DIR/<model>.bioimageio.zip``, the zip that bioimage.io, deepImageJ, ilastik and QuPath load:
  ``rdf.yaml`` (model format 0.5), ONNX weights and a PyTorch state dict (whose architecture is
  :func:`probability_network`, so it needs ``celltune`` importable; the ONNX weights need nothing), a synthetic
  test input and the expected output (``.npy``), and a README with the contract. The normalization becomes
  bioimage.io pre-processing where an op exists (``minmax``: ``scale_range`` 0-100 %, ``percentile``:
  ``scale_range`` 1-99 % then ``clip``), computed per image rather than per sequence; ``log`` has no op, so that
  package takes normalized input. The package is checked with ``bioimageio.spec`` before it is written.

The contract (:func:`export_contract`): input and output names, layouts and size rule, normalization, the
resampling factor the model was trained at (``scale``: frames are resampled by it before the network and the
probabilities back), the post-processing thresholds (defaults and per dataset) and where the model came from.

Models that cannot be exported with dynamic sizes are refused in one line: temporal models (``time_window`` > 1,
windows of frames) and the unpadded ("valid") U-Net, whose sizes ``torch.export`` cannot keep symbolic.

Output is atomic: everything is written into a hidden folder beside ``DIR`` and renamed into place at the end, so a
failed export leaves nothing behind; an existing ``DIR`` is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celltune.data_prep.common import UserInputError, default_permissions, did_you_mean, one_line

if TYPE_CHECKING:
    from torch import nn

    from celltune.platform.model_registry import LoadedModel
    from celltune.trainables.model_card import ModelCard

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "bioimageio")
ONNX_FILE = "model.onnx"
CONTRACT_FILE = "celltune_export.json"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
METADATA_KEY = "celltune"  # the ONNX metadata_props entry holding the contract as JSON
VERIFY_ATOL = 1e-4  # onnxruntime vs PyTorch, on probabilities
# Channel names per target kind, in the model's channel order (see celltune.trainables.postprocess).
CHANNEL_NAMES = {"tertiary": ("background", "boundary", "cell"), "binary": ("background", "cell"),
                 "mask_marker": ("mask", "marker")}
NORMALIZATION_TEXT = {
    "minmax": "(x - min) / (max - min), min and max over the whole sequence (all frames)",
    "percentile": "(x - p1) / (p99 - p1) clipped to [0, 1], p1 and p99 the 1st and 99th percentiles over the "
                  "whole sequence",
    "log": "log(1 + x - min) / log(1 + max - min), min and max over the whole sequence",
}
# celltune's normalizations as bioimage.io pre-processing (per image: bioimage.io has no per-sequence statistics).
BIOIMAGEIO_PREPROCESSING: dict[str, list[dict[str, Any]]] = {
    "minmax": [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 0.0, "max_percentile": 100.0}}],
    "percentile": [{"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0,
                                                    "max_percentile": 99.0}},
                   {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}}],
}
_REQUIREMENTS = {"onnx": ("onnx", "onnxscript", "onnxruntime"),
                 "bioimageio": ("onnx", "onnxscript", "onnxruntime", "bioimageio.spec")}

__all__ = ["FORMATS", "ExportResult", "export_model", "export_contract", "probability_network"]


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote: ``files`` relative to ``out``."""

    format: str
    out: Path
    files: tuple[str, ...]
    opset: int
    max_abs_diff: float  # onnxruntime vs PyTorch on a random valid input

    def summary(self) -> str:
        return (f"wrote {self.out}: {', '.join(self.files)} (ONNX opset {self.opset}; onnxruntime matches PyTorch "
                f"to {self.max_abs_diff:.1e})")


def probability_network(config: Mapping[str, Any]) -> nn.Sequential:
    """The network of a model card's ``model`` entry followed by its output activation.

    This is the architecture callable of the bioimage.io package's ``pytorch_state_dict`` weights (untrained; the
    package's state dict is loaded into it), built like the module the ONNX graph is exported from.

    Args:
        config: a model card's ``model`` entry (``name``, ``options``, ``target_kind``, ``size_multiple``).

    Returns:
        ``torch.nn.Sequential(network, activation)`` mapping ``(B, 1, H, W)`` to probabilities ``(B, C, H, W)``.

    Raises:
        UserInputError: a malformed entry or an unknown architecture or target kind.
    """
    from torch import nn

    from celltune.trainables.architectures import model_from_config
    from celltune.trainables.model_card import ArchitectureEntry

    entry = ArchitectureEntry.model_validate(dict(config))
    return nn.Sequential(model_from_config(entry.registry_config()), _activation_module(entry.target_kind))


def export_model(uri: str, fmt: str, out: Path, *, tracking_uri: str | None = None) -> ExportResult:
    """Export model ``uri`` as ``fmt`` into the new folder ``out`` (see the module docstring for the contents).

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a checkpoint folder.
        fmt: one of :data:`FORMATS`.
        out: the folder to create; it must not exist (its parent is created).
        tracking_uri: MLflow tracking and registry URI for ``models:/`` URIs (default: ``default_tracking_uri()``).

    Raises:
        UserInputError: an unknown format, an existing ``out``, missing export packages, an unknown or broken
            model, or a model that cannot be exported (temporal, unpadded convolutions).
        RuntimeError: the exported graph disagrees with PyTorch, or the bioimage.io package does not validate.
    """
    from celltune.platform.model_registry import load_model

    fmt = check_format(fmt)
    out = Path(out).expanduser()
    if out.exists() or out.is_symlink():
        raise UserInputError(f"--out {out}: already exists; name a new folder")
    _require_packages(fmt)
    loaded = load_model(uri, tracking_uri)
    check_exportable(loaded.model, uri)
    network = _with_activation(loaded)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _staging(out) as staging:
        if fmt == "onnx":
            opset, diff = _write_onnx(network, loaded, staging)
        else:
            opset, diff = _write_bioimageio(network, loaded, staging)
        files = tuple(sorted(p.name for p in staging.iterdir()))
    logger.info("exported %s as %s into %s", uri, fmt, out)
    return ExportResult(fmt, out, files, opset, diff)


def check_format(fmt: str) -> str:
    """``fmt`` when it is one of :data:`FORMATS`; a one-line error with a suggestion otherwise."""
    if fmt in FORMATS:
        return fmt
    hint = did_you_mean(fmt, FORMATS)
    raise UserInputError(f"--format {fmt!r}: unknown format{f'; {hint}' if hint else ''} (choose from "
                         f"{', '.join(FORMATS)})")


def check_exportable(model: nn.Module, uri: str) -> None:
    """Refuse what cannot be exported with dynamic batch and sizes: temporal and unpadded-convolution models."""
    spec = model.spec
    if spec.time_window > 1:
        raise UserInputError(f"{uri}: a temporal model ({spec.name}, time_window={spec.time_window}) sees windows "
                             "of frames; export takes single-frame models only")
    if spec.output_crop > 0:
        raise UserInputError(f"{uri}: {spec.name} with unpadded ('valid') convolutions cannot be exported with "
                             "dynamic sizes (torch.export specializes them); export a padding='same' model")


def export_contract(loaded: LoadedModel) -> dict[str, Any]:
    """What an exported graph expects and produces, as plain JSON values (the ONNX metadata and the bioimage.io
    package's ``config.celltune``); ``opset`` is filled in once the graph exists."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    card = loaded.card
    kind = card.target_kind
    channels = _channel_names(kind, loaded.model.spec.out_channels)
    try:
        celltune_version = version("celltune")
    except PackageNotFoundError:  # a source tree without install
        celltune_version = "unknown"
    multiple = card.size_multiple
    return {
        "format": 1,
        "source": {"uri": loaded.ref.uri, "name": loaded.ref.name, "version": loaded.ref.version,
                   "run_id": loaded.ref.run_id},
        "architecture": card.model.registry_config(),
        "target_kind": kind,
        "input": {
            "name": INPUT_NAME, "layout": "BCYX", "shape": ["batch", 1, "height", "width"], "dtype": "float32",
            "size_multiple": multiple,
            "size_rule": f"height and width must be multiples of {multiple} (pad, e.g. by reflection, and crop "
                         "the output back)",
            "normalization": card.normalization,
            "normalization_formula": NORMALIZATION_TEXT.get(card.normalization, card.normalization),
            "scale": dict(card.scale),
            "scale_rule": "resample frames by the factor of their dataset (data.scale) before the network and the "
                          "probabilities back; no entry or 1 means none",
        },
        "output": {"name": OUTPUT_NAME, "layout": "BCYX", "shape": ["batch", len(channels), "height", "width"],
                   "dtype": "float32", "channels": list(channels),
                   "activation": _activation(kind), "kind": "probabilities (the activation is part of the graph)"},
        "postprocess": dict(card.postprocess),
        "postprocess_per_dataset": {k: dict(v) for k, v in card.postprocess_per_dataset.items()},
        "tta": card.tta,
        "tta_rule": ("the thresholds were tuned on the mean of the 8 flips and quarter turns of each frame (each "
                     "output mapped back): predict so, or expect lower scores") if card.tta else "none",
        "validation": dict(card.validation or card.best),
        "opset": None,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "celltune_version": celltune_version,
    }


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _require_packages(fmt: str) -> None:
    from importlib.util import find_spec

    def missing(name: str) -> bool:
        try:
            return find_spec(name) is None
        except ModuleNotFoundError:  # a dotted name whose parent package is absent
            return True

    absent = [name for name in _REQUIREMENTS[fmt] if missing(name)]
    if absent:
        raise UserInputError(f"--format {fmt} needs {', '.join(absent)}: pip install 'celltune[export]'")


def _activation(kind: str) -> str:
    from celltune.trainables.target_kinds import target_kind

    return target_kind(kind).activation


def _channel_names(kind: str, channels: int) -> tuple[str, ...]:
    names = CHANNEL_NAMES.get(kind, ())
    return tuple(names) if len(names) == channels else tuple(f"channel{i}" for i in range(channels))


def _activation_module(kind: str) -> nn.Module:
    from torch import nn

    return nn.Softmax(dim=1) if _activation(kind) == "softmax" else nn.Sigmoid()


def _with_activation(loaded: LoadedModel) -> nn.Sequential:
    """:func:`probability_network`'s layout around the loaded network (its weights), in eval mode."""
    from torch import nn

    return nn.Sequential(loaded.model, _activation_module(loaded.card.target_kind)).eval()


def _slug(loaded: LoadedModel) -> str:
    """A file-name-safe model name: NAME-vVERSION for a registered version, the folder name otherwise."""
    ref = loaded.ref
    raw = f"{ref.name}-v{ref.version}" if ref.name else Path(ref.local_dir or ref.uri).name
    return re.sub(r"[^A-Za-z0-9_+-]+", "_", raw).strip("_") or "celltune-model"


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden folder beside ``out``, renamed to ``out`` when the block succeeds and removed when it fails."""
    staging = default_permissions(Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent)))
    try:
        yield staging
        if out.exists() or out.is_symlink():  # made by someone else while we worked
            raise UserInputError(f"--out {out}: appeared while exporting; nothing written")
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about optional torchvision ops and deprecations; none concern a celltune network."""
    noisy = logging.getLogger("torch.onnx")
    level = noisy.level
    noisy.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        noisy.setLevel(level)


def _export_onnx(network: nn.Module, multiple: int, path: Path, metadata: Mapping[str, Any]) -> int:
    """Export ``network`` with dynamic batch, height and width (multiples of ``multiple``); returns the opset."""
    import torch
    from torch.export import Dim

    # Batch 2 in the example: torch.export specializes a dimension of size 1 to a constant.
    example = torch.zeros(2, 1, 2 * multiple, 3 * multiple)
    sizes = {0: Dim("batch", min=1), 2: multiple * Dim("height_blocks", min=1),
             3: multiple * Dim("width_blocks", min=1)}
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(network, (example,), dynamo=True, dynamic_shapes=(sizes,),
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
    except Exception as exc:  # the exporter raises many types; name the step
        raise RuntimeError(f"torch.onnx.export failed: {one_line(exc)}") from exc
    opset = int(program.model.opset_imports.get("", 0))
    program.model.metadata_props[METADATA_KEY] = json.dumps({**metadata, "opset": opset}, sort_keys=True)
    program.model.doc_string = "celltune model: normalized (B, 1, H, W) frames -> per-class probabilities"
    program.save(str(path), external_data=False)
    return opset


def _verify_onnx(path: Path, network: nn.Module, multiple: int) -> float:
    """Max absolute difference between onnxruntime and PyTorch on a random non-square batch of valid size.

    Raises:
        RuntimeError: the difference exceeds :data:`VERIFY_ATOL`.
    """
    import numpy as np
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # a tiny input; do not spin up every core
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 1, 3 * multiple, 5 * multiple), dtype=np.float32)
    got = session.run(None, {INPUT_NAME: x})[0]
    with torch.no_grad():
        expected = network(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
    if not diff <= VERIFY_ATOL:
        raise RuntimeError(f"the exported ONNX graph disagrees with PyTorch (max abs difference {diff:.3g} > "
                           f"{VERIFY_ATOL:g}, output {got.shape} vs {expected.shape})")
    return diff


def _write_onnx(network: nn.Module, loaded: LoadedModel, folder: Path) -> tuple[int, float]:
    contract = export_contract(loaded)
    opset = _export_onnx(network, loaded.card.size_multiple, folder / ONNX_FILE, contract)
    diff = _verify_onnx(folder / ONNX_FILE, network, loaded.card.size_multiple)
    contract.update(opset=opset, onnxruntime_max_abs_diff=diff)
    (folder / CONTRACT_FILE).write_text(json.dumps(contract, indent=2) + "\n")
    return opset, diff


# ---------------------------------------------------------------------------------------------------------------
# bioimage.io
# ---------------------------------------------------------------------------------------------------------------


def _synthetic_frame(height: int, width: int):
    """A raw-looking float32 frame: bright discs on a dim noisy background (the package's test input)."""
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    frame = rng.normal(100.0, 8.0, (height, width))
    for _ in range(max(4, height * width // 600)):
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(4.0, 9.0)
        frame += rng.uniform(200.0, 500.0) * (((yy - cy) ** 2 + (xx - cx) ** 2) < radius ** 2)
    return frame.astype(np.float32)


def _test_tensors(network: nn.Module, card: ModelCard):
    """``(test_input, test_output)`` as ``(1, 1, H, W)`` and ``(1, C, H, W)`` float32 arrays. The input is raw when
    the normalization maps to bioimage.io pre-processing (the consumer normalizes), else already normalized."""
    import numpy as np
    import torch

    from celltune.data_prep.stats import IntensityStats
    from celltune.trainables.data import normalize

    multiple = card.size_multiple
    raw = _synthetic_frame(4 * multiple, 6 * multiple)
    stats = IntensityStats(raw.dtype)
    stats.add(raw)
    normalized = normalize(raw, stats.result(), card.normalization).astype(np.float32)
    with torch.no_grad():
        output = network(torch.from_numpy(normalized[None, None])).numpy()
    given = raw if card.normalization in BIOIMAGEIO_PREPROCESSING else normalized
    return given[None, None], output.astype(np.float32)


def _package_name(loaded: LoadedModel) -> str:
    """bioimage.io's ``name`` allows letters, digits and ``_+- ()``."""
    ref = loaded.ref
    text = f"celltune {ref.name} v{ref.version}" if ref.name else f"celltune {Path(ref.local_dir or ref.uri).name}"
    return re.sub(r"[^A-Za-z0-9_+\- ()]+", "-", f"{text} ({loaded.card.architecture})")[:128]


def _readme(loaded: LoadedModel, contract: Mapping[str, Any], preprocessed: bool) -> str:
    card = loaded.card
    source = contract["source"]
    inp, outp = contract["input"], contract["output"]
    where = f"`{source['name']}` version {source['version']}" if source["name"] else f"`{source['uri']}`"
    normalization = ("The package's pre-processing does this per image (bioimage.io has no per-sequence "
                     "statistics): give raw frames." if preprocessed else
                     "bioimage.io has no such operation: give frames already normalized so.")
    scale = ", ".join(f"{k}: {v:g}" for k, v in card.scale.items()) or "none (1)"
    per_dataset = "\n".join(f"- {name}: `{json.dumps(params, sort_keys=True)}`"
                            for name, params in sorted(card.postprocess_per_dataset.items())) or "- none tuned"
    scores = "\n".join(f"- {k}: {v:.4g}" for k, v in sorted(contract["validation"].items())
                       if isinstance(v, (int, float))) or "- none recorded"
    return f"""# {_package_name(loaded)}

A celltune `{card.architecture}` network ({card.target_kind} targets), exported from {where}.

## Input

`{INPUT_NAME}`: float32 `(batch, 1, y, x)`; y and x must be multiples of {inp['size_multiple']}
(pad, e.g. by reflection, and crop the output back).

Normalization `{card.normalization}`: {inp['normalization_formula']}. {normalization}

Resampling: celltune resamples frames by the factor the model was trained at (per dataset: {scale}) before the
network and the probabilities back; bioimage.io has no such operation, so resample beforehand where it is not 1.

## Output

`{OUTPUT_NAME}`: float32 `(batch, {len(outp['channels'])}, y, x)`, channels {', '.join(outp['channels'])}:
probabilities ({outp['activation']} is part of the network).

## Post-processing (celltune, not part of this package)

celltune turns the probabilities into cells with the `{card.target_kind}` post-processing
(`celltune.trainables.target_kinds.postprocess`), thresholds by default `{json.dumps(card.postprocess, sort_keys=True)}`
and, tuned per dataset:

{per_dataset}

## Weights

- ONNX (opset {contract['opset']}): needs only an ONNX runtime.
- PyTorch state dict: the architecture is `celltune.platform.model_export.probability_network`, so `celltune`
  must be importable (`pip install celltune`).

## Validation

The test tensors are a synthetic frame and this network's output for it: they check that a runtime reproduces the
network, not how well it segments. Validation scores recorded at training (celltune, on held-out CTC frames):

{scores}
"""


def _environment() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    try:
        celltune = f"celltune=={version('celltune')}"
    except PackageNotFoundError:
        celltune = "celltune"
    torch_version = torch.__version__.split("+")[0]
    return ("name: celltune\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.11\n"
            f"  - pytorch=={torch_version}\n  - pip\n  - pip:\n      - {celltune}\n")


def _write_bioimageio(network: nn.Module, loaded: LoadedModel, folder: Path) -> tuple[int, float]:
    import numpy as np
    import tifffile
    import torch
    import yaml
    from bioimageio.spec import InvalidDescr, load_description, save_bioimageio_package
    from bioimageio.spec.model.v0_5 import ModelDescr

    card = loaded.card
    multiple = card.size_multiple
    preprocessing = BIOIMAGEIO_PREPROCESSING.get(card.normalization, [])
    contract = export_contract(loaded)
    with tempfile.TemporaryDirectory(prefix="celltune-bioimageio-") as scratch:
        files = Path(scratch)
        opset = _export_onnx(network, multiple, files / ONNX_FILE, contract)
        diff = _verify_onnx(files / ONNX_FILE, network, multiple)
        contract.update(opset=opset, onnxruntime_max_abs_diff=diff)
        torch.save(network.state_dict(), files / "weights.pt")  # what bioimage.io loads, weights_only
        test_input, test_output = _test_tensors(network, card)
        np.save(files / "test_input.npy", test_input)
        np.save(files / "test_output.npy", test_output)
        # What bioimage.io shows people (it cannot show .npy): the same tensors as TIFF.
        tifffile.imwrite(files / "sample_input.tif", test_input[0, 0])
        tifffile.imwrite(files / "sample_output.tif", test_output[0], photometric="minisblack")
        (files / "README.md").write_text(_readme(loaded, contract, bool(preprocessing)))
        (files / "environment.yaml").write_text(_environment())
        channels = contract["output"]["channels"]
        space = [{"type": "space", "id": axis, "size": {"min": multiple, "step": multiple}} for axis in ("y", "x")]
        rdf = {
            "format_version": ModelDescr.implemented_format_version,
            "type": "model",
            "name": _package_name(loaded),
            "description": (f"celltune {card.architecture} cell segmentation network ({card.target_kind}): "
                            f"{card.normalization}-normalized frames to per-class probabilities "
                            f"({', '.join(channels)})."),
            "authors": [{"name": _author()}],
            "cite": [{"text": "Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image "
                              "Segmentation. MICCAI 2015", "doi": "10.1007/978-3-319-24574-4_28"}],
            "documentation": {"source": "README.md"},
            "tags": ["celltune", "cell-segmentation", "2d", "instance-segmentation", "cell-tracking-challenge",
                     card.architecture, card.target_kind],
            "inputs": [{
                "id": INPUT_NAME,
                "description": (f"raw frame, normalized by the pre-processing ({card.normalization})" if preprocessing
                                else f"frame normalized as {NORMALIZATION_TEXT.get(card.normalization, '')}"),
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["raw"]}, *space],
                "test_tensor": {"source": "test_input.npy"},
                "sample_tensor": {"source": "sample_input.tif"},
                "data": {"type": "float32"},
                "preprocessing": preprocessing,
            }],
            "outputs": [{
                "id": OUTPUT_NAME,
                "description": f"per-class probabilities ({contract['output']['activation']} inside the network)",
                "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channels},
                         *({"type": "space", "id": axis, "size": {"tensor_id": INPUT_NAME, "axis_id": axis}}
                           for axis in ("y", "x"))],
                "test_tensor": {"source": "test_output.npy"},
                "sample_tensor": {"source": "sample_output.tif"},
                "data": {"type": "float32", "range": [0.0, 1.0]},
            }],
            "weights": {
                "pytorch_state_dict": {
                    "source": "weights.pt",
                    "architecture": {"import_from": "celltune.platform.model_export",
                                     "callable": "probability_network",
                                     "kwargs": {"config": card.model.model_dump(mode="json")}},
                    "pytorch_version": torch.__version__.split("+")[0],
                    "dependencies": {"source": "environment.yaml"},
                },
                "onnx": {"source": ONNX_FILE, "opset_version": opset, "parent": "pytorch_state_dict"},
            },
            "config": {"celltune": contract},
        }
        (files / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
        description = load_description(files / "rdf.yaml", perform_io_checks=True)
        if isinstance(description, InvalidDescr):
            errors = [f"{'.'.join(map(str, e.loc)) or 'rdf'}: {e.msg}"
                      for detail in description.validation_summary.details for e in detail.errors]
            raise RuntimeError(f"the bioimage.io description does not validate: {'; '.join(errors)[:500]}")
        save_bioimageio_package(description, output_path=folder / f"{_slug(loaded)}.bioimageio.zip")
    return opset, diff


def _author() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no login name (some containers)
        return os.environ.get("USER") or "celltune user"
