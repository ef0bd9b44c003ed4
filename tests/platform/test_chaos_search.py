"""The short version of `benchmarks/chaos_search.py` (issue 18): a search on a head and two worker nodes of this
machine finishes whole while worker nodes hosting its trials are SIGKILLed and restarted every few seconds and its
driver is SIGKILLed once and resumed. The script makes every check (all trials complete with every epoch, none
finished before the driver kill reports again, one child run per trial and none left RUNNING, the registered
version is the best trial's) and exits 1 on any failure; this test runs it and reads its figures."""

from __future__ import annotations

import json
import sys

import pytest
from benchmark_scripts import benchmark_module

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds each node's processes through /proc"),
]


def test_a_search_finishes_whole_through_node_kills_and_a_driver_kill(tmp_path, demo_stores, capsys):
    out = tmp_path / "chaos.json"
    with benchmark_module("chaos_search") as chaos:
        code = chaos.main(["--trials", "4", "--epochs", "3", "--kill-every", "12", "--restart-after", "3",
                           "--driver-kill-after", "1", "--no-baseline", "--timeout", "600", "--stores",
                           str(demo_stores), "--workdir", str(tmp_path / "work"), "--json", str(out)])
    printed = capsys.readouterr().out
    (result,) = json.loads(out.read_text())
    assert code == 0 and result["failures"] == [], printed[-4000:]
    assert result["completed"] == result["trials"] == 4
    assert result["driver_kills"] == 1 and result["nodes_used"] >= 2
    assert result["trial_kills"] >= 1, printed[-4000:]  # nodes were lost under running trials
    assert "| chaos |" in printed and "| pass |" in printed
