"""benchmarks/gpu_check.py in its CPU mode: every section of the accelerator check runs, so the GPU path cannot
rot between accelerator runs (the figures themselves come from the device machine)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.ray  # demo_stores
@pytest.mark.slow
def test_every_section_of_the_gpu_check_runs_on_the_cpu(demo_stores, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("_celltune_gpu_check", SCRIPT)
    check = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = check  # its dataclasses look their module up
    spec.loader.exec_module(check)
    out = tmp_path / "gpu_check.md"
    assert check.main(["--stores", str(demo_stores), "--cpu", "--tiny", "--minutes", "0.05", "--out", str(out)]) == 0
    tables = json.loads(out.with_suffix(".json").read_text())
    assert {(r["model"], r["mode"]) for r in tables["models"]} == {
        (m, mode) for m in ("xbnet", "unet") for mode in ("fp32", "bf16", "bf16+channels_last")}
    assert all(r["samples/s"] > 0 for r in tables["models"])
    assert [r["dataset"] for r in tables["data"]] == ["Synth-Dense", "Synth-Round"]
    assert all(r["crops/s per worker"] > 0 and r["workers for the best step rate"] >= 1 for r in tables["data"])
    (run,) = tables["train"]
    assert run["steps"] in (2, 4) and 0 <= run["seg_mean"] <= 1  # one or both tiny epochs within the budget
    assert {r["model"] for r in tables["predict"]} == {"xbnet", "unet"}
    assert "## predict" in out.read_text() and "## models: forward + backward" in capsys.readouterr().out
