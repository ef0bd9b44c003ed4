"""The README's main job, `celltune demo`, end to end on a fresh working folder, as a user's shell runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from celltune.platform.ctc_results import read_ctc_result

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_generates_searches_registers_predicts_and_scores(tmp_path):
    workdir = tmp_path / "celltune-demo"
    env = {**os.environ, "RAY_ADDRESS": ""}
    # a pipe, as in CI, a log file or `ray job submit`: plain lines, nothing from the libraries underneath
    done = subprocess.run([sys.executable, "-m", "celltune.platform", "demo", "--workdir", str(workdir)],
                          env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    out = done.stdout.decode()  # bytes as written: text mode would turn a redraw's carriage return into a newline
    assert done.returncode == 0, out
    assert "registered models:/celltune-demo/1 (alias candidate" in out
    assert "search demo-" in out and " 4 trials (" in out
    table = out[out.index("predicted with models:/celltune-demo/1"):]
    assert "SEG" in table and "TRA" in table and "P@0.5" in table
    (predictions,) = (workdir / "predictions").iterdir()
    result = read_ctc_result(predictions / "01_RES")  # a valid CTC result folder
    assert len(result.masks) == 12
    assert f"celltune ui --tracking-uri sqlite:///{workdir.resolve()}/mlflow.db" in out

    assert "\r" not in out, "carriage-return redraws in a pipe"
    lines = out.splitlines()
    assert len(lines) <= 60, f"{len(lines)} lines:\n{out}"
    ends = [line for line in lines
            if line.startswith("trial ") and (" done after " in line or " stopped after " in line)]
    assert len(ends) == 4  # one per trial end
    stopped = out[out.index("search demo-"):].split(" stopped early by ASHA")[0].rsplit(" ", 1)[-1]
    assert sum(" stopped after " in line for line in ends) == int(stopped)  # the live lines agree with the summary
    for noise in ("WARNING", "Warning:", "Checkpoint successfully created", "pid=", "Trial status", "Traceback",
                  "Configuration for experiment", "tensorboard"):
        assert noise not in out, f"{noise!r} on the console:\n{out}"
    log = workdir / "celltune.log"
    assert f"library output in {log.resolve()}" in out
    assert log.read_text().strip(), "the libraries' lines were not captured"
