"""The bound and the table of benchmarks/bench_search_disk.py, on made-up samples (no Ray)."""

from __future__ import annotations

import pytest
from benchmark_scripts import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_search_disk") as module:
        yield module


def test_the_bound_counts_completed_best_and_running_trials(bench):
    # 10 completed + 1 best stopped trial, 1 checkpoint each; 2 running trials hold up to 2 each while writing
    assert bench.bounds(10, 1, 1, 2, 1000) == (11_000, 15_000)
    assert bench.bounds(0, 2, 3, 1, 10) == (60, 100)


def test_the_report_has_a_row_at_the_end_and_at_the_peak_with_ratios(bench, tmp_path):
    end = bench.DiskSample(checkpoints=5, checkpoint_bytes=5_000_000, total_bytes=5_200_000,
                           largest_checkpoint=1_000_000)
    peak = bench.DiskSample(checkpoints=7, checkpoint_bytes=7_000_000, total_bytes=7_300_000,
                            largest_checkpoint=1_000_000)
    lines = bench.format_report(trials=50, completed=9, stopped=41, failed=0, end=end, peak=peak, keep=1,
                                keep_best=1, concurrent=2, unpruned_checkpoints=60, wall_s=600)
    text = "\n".join(lines)
    assert "largest checkpoint 1.0 MB, 10.0 min" in text
    (row_end,) = [line for line in lines if line.startswith("end of search")]
    (row_peak,) = [line for line in lines if line.startswith("peak, running")]
    assert row_end.split()[-3:] == ["10.0", "MB", "0.50"]  # bound (9 + 1) x 1 x 1 MB
    assert row_peak.split()[-3:] == ["14.0", "MB", "0.50"]  # plus 2 x 2 x 1 MB
    assert lines[-1].endswith("60 checkpoints, up to 60.0 MB")


def test_sample_disk_counts_tune_and_train_run_checkpoints(bench, tmp_path):
    for folder in (tmp_path / "run_trial_a" / "checkpoint_000001", tmp_path / "train-runs" / "b" / "checkpoint_x"):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"w" * 100)
    (tmp_path / "experiment_state.json").write_bytes(b"s" * 10)
    sample = bench.sample_disk(tmp_path)
    assert (sample.checkpoints, sample.checkpoint_bytes, sample.total_bytes, sample.largest_checkpoint) == \
        (2, 200, 210, 100)
