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
