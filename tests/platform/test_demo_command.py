"""The README's main job, `celltune demo`, end to end on a fresh working folder."""

from __future__ import annotations

import pytest

from celltune.platform.cli import main
from celltune.platform.ctc_results import read_ctc_result

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_generates_searches_registers_predicts_and_scores(tmp_path, ray_session, capsys):
    workdir = tmp_path / "celltune-demo"
    assert main(["demo", "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "registered models:/celltune-demo/1 (alias candidate" in out
    assert "search demo-" in out and " 4 trials (" in out
    table = out[out.index("predicted with models:/celltune-demo/1"):]
    assert "SEG" in table and "TRA" in table and "P@0.5" in table
    (predictions,) = (workdir / "predictions").iterdir()
    result = read_ctc_result(predictions / "01_RES")  # a valid CTC result folder
    assert len(result.masks) == 12
    assert f"celltune ui --tracking-uri sqlite:///{workdir.resolve()}/mlflow.db" in out
