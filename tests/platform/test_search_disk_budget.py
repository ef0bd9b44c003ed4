"""`celltune search --keep-checkpoints` and the disk line of the search summary (issue 18)."""

from __future__ import annotations

import pytest

from celltune.platform.cli import main
from celltune.platform.search_run import SearchResult, search_summary


@pytest.mark.parametrize(("extra", "message"), [
    (["--keep-checkpoints", "0"], "--keep-checkpoints 0: must be at least 1"),
    (["--name", "s", "--resume", "--keep-checkpoints", "2"], "leave out --keep-checkpoints"),
    (["--threshold-trials", "0"], "--threshold-trials 0: must be at least 1"),
])
def test_keep_checkpoints_input_is_one_line_exit_2(tmp_path, capsys, extra, message):
    code = main(["search", "--space", "demo", "--storage", str(tmp_path / "s"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_the_summary_says_the_disk_used(tmp_path):
    result = SearchResult(name="s", parent_run_id="r", tracking_uri="sqlite:///m.db", path=str(tmp_path / "s"),
                          trials=[], best=None, disk_bytes=12_345_678)
    assert f"disk: 12.3 MB in {tmp_path / 's'}" in search_summary(result)
    result.disk_bytes = None  # remote storage: not measured, no line
    assert "disk:" not in search_summary(result)
