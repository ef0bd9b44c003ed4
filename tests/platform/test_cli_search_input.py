"""`celltune search` input errors: one line, exit 2, before Ray or MLflow start."""

from __future__ import annotations

import pytest

from celltune.platform.cli import main


@pytest.mark.parametrize(("extra", "message"), [
    (["--name", "it's"], "--name \"it's\": use letters, digits"),
    (["--name", "a/b"], "--name 'a/b': use letters, digits"),
    (["--trials", "0"], "--trials 0: needs at least one trial"),
    (["--name", "s", "--resume", "--set", "training.epochs=2"], "leave out --set"),
    (["--name", "s", "--resume", "--trials", "3"], "leave out --trials"),
    (["--name", "nosuch", "--resume"], "--resume: no search named 'nosuch'"),
])
def test_bad_search_input_is_one_line_exit_2(demo_stores, tmp_path, capsys, extra, message):
    code = main(["search", "--space", "demo", "--stores", str(demo_stores), "--storage", str(tmp_path / "s"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_unknown_space_suggests_a_shipped_one(tmp_path, capsys):
    assert main(["search", "--space", "demoo", "--dry-run"]) == 2
    assert "did you mean 'demo'" in capsys.readouterr().err
