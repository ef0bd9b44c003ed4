"""`celltune data synth | prep | info` through the command line entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from celltune.platform.cli import main


def test_synth_gt_slices_flag(tmp_path: Path, capsys) -> None:
    code = main(["data", "synth", str(tmp_path), "--name", "S3", "--ndim", "3", "--depth", "5", "--size", "40",
                 "--frames", "4", "--cells", "2", "--gt-every", "2", "--gt-slices", "--sequences", "1"])
    assert code == 0, capsys.readouterr().err
    seg = sorted(p.name for p in (tmp_path / "S3" / "01_GT" / "SEG").iterdir())
    assert len(seg) == 2 and all(name.startswith(("man_seg_000_", "man_seg_002_")) for name in seg)


def test_synth_gt_slices_needs_3d(tmp_path: Path, capsys) -> None:
    assert main(["data", "synth", str(tmp_path), "--gt-slices"]) == 2
    assert "gt_slices" in capsys.readouterr().err


@pytest.mark.ray
def test_prep_and_info(tmp_path: Path, capsys, ray_session) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    for name, extra in (("Cli-A", []), ("Cli-B", ["--dtype", "uint16"])):
        assert main(["data", "synth", str(src), "--name", name, "--frames", "5", "--size", "64", "--cells", "3",
                     *extra]) == 0
    capsys.readouterr()
    code = main(["data", "prep", str(src), "--out", str(out), "--datasets", "Cli-B", "--no-progress", "--seed", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.splitlines()[0].startswith("prep: 1 converted, 0 up to date, 10 index rows")
    assert sorted(p.name for p in out.glob("*.zarr")) == ["Cli-B.zarr"]

    assert main(["data", "prep", str(src), "--out", str(out), "--no-progress"]) == 0
    assert "prep: 1 converted, 1 up to date, 20 index rows" in capsys.readouterr().out

    assert main(["data", "info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:5] == ["Cli-A", "01", "5", "64x64", "uint8"]
    assert lines[4].split()[:5] == ["Cli-B", "01", "5", "64x64", "uint16"]
    assert lines[4].split()[5:8] == ["2", "5", "5"]  # GT on frames 0 and 3, ST and TRA on all five
    assert any(line.startswith("index.parquet: 20 rows, seed 0") for line in lines)


def test_info_on_a_folder_without_stores(tmp_path: Path, capsys) -> None:
    assert main(["data", "info", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"celltune: error: {tmp_path}: no celltune stores (run `celltune " \
                                              f"data prep SRC --out {tmp_path}`)"


@pytest.mark.ray
def test_an_error_found_in_a_ray_task_is_the_only_line_on_stderr(tmp_path: Path) -> None:
    """A fresh process starts its own local Ray; Ray's token-authentication notice must not come before (issue 18)."""
    import os
    import subprocess
    import sys

    from celltune.data_prep.synth import SynthSpec, generate_dataset

    generate_dataset(tmp_path / "src", SynthSpec(name="Cut-2D", frames=3, size=32, cells=2, seed=1),
                     show_progress=False)
    frame = tmp_path / "src" / "Cut-2D" / "01" / "t001.tif"
    frame.write_bytes(frame.read_bytes()[:100])  # truncated: found while converting, inside a Ray task
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-m", "celltune.platform", "data", "prep", str(tmp_path / "src"),
                           "--out", str(tmp_path / "stores"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith("celltune: error: ") and "t001.tif" in done.stderr
