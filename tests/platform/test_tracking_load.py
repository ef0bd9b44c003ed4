"""The short version of `benchmarks/tracking_load.py` (issue 18): trial processes logging to one SQLite store at
once through celltune's logger lose nothing and none fails on a locked database."""

from __future__ import annotations

import json

from benchmark_scripts import benchmark_module


def test_concurrent_trial_processes_lose_nothing_on_the_sqlite_store(tmp_path, capsys):
    out = tmp_path / "load.json"
    with benchmark_module("tracking_load") as load:
        code = load.main(["--processes", "4", "--seconds", "5", "--stores", "sqlite", "--workdir",
                          str(tmp_path / "work"), "--json", str(out)])
    printed = capsys.readouterr().out
    (result,) = json.loads(out.read_text())
    assert code == 0 and result["problems"] == [], printed[-3000:]
    assert result["lost"] == 0 and result["failed"] == 0
    assert result["metric_values"] > 4 * 40 and result["figures"] > 0 and result["params"] == 4 * 60
