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
    (["--max-concurrent", "0"], "--max-concurrent 0: must be at least 1"),
    (["--max-concurrent", "-1"], "--max-concurrent -1: must be at least 1"),
    (["--max-failures", "-2"], "--max-failures -2: must be -1 (restart a trial as often as it takes) or at least 0"),
    (["--name", "s", "--resume", "--max-failures", "-1"], "leave out --max-failures"),
])
def test_bad_search_input_is_one_line_exit_2(demo_stores, tmp_path, capsys, extra, message):
    code = main(["search", "--space", "demo", "--stores", str(demo_stores), "--storage", str(tmp_path / "s"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize(("extra", "retries"), [([], 2), (["--max-failures", "-1"], "forever"),
                                              (["--max-failures", "0"], 0)])
def test_the_dry_run_plan_says_how_often_a_lost_trial_restarts(demo_stores, capsys, extra, retries):
    import json

    assert main(["search", "--space", "demo", "--stores", str(demo_stores), "--dry-run", *extra]) == 0
    assert json.loads(capsys.readouterr().out)["retries_per_trial"] == retries


def test_unknown_space_suggests_a_shipped_one(tmp_path, capsys):
    assert main(["search", "--space", "demoo", "--dry-run"]) == 2
    assert "did you mean 'demo'" in capsys.readouterr().err


def test_a_resumed_search_keeps_the_base_config_it_started_with(tmp_path):
    from celltune.data_prep.common import UserInputError
    from celltune.platform.search_run import read_base_tree, write_base_tree
    from celltune.search_spaces.tuner import SearchSettings

    settings = SearchSettings(storage_path=str(tmp_path), name="s1", trials=2)
    tree = {"data": {"stores": ["/x/A.zarr"]}, "training": {"epochs": 7}}  # as started, --set included
    write_base_tree(settings, tree)
    assert read_base_tree(settings) == tree
    assert [p.name for p in (tmp_path / "s1").iterdir()] == ["celltune_base_config.json"]  # no temp file left
    with pytest.raises(UserInputError, match="--resume: .* is missing or unreadable"):
        read_base_tree(SearchSettings(storage_path=str(tmp_path), name="other", trials=2))


def test_a_storage_that_is_a_file_is_refused(demo_stores, tmp_path, capsys):
    (tmp_path / "s").write_text("not a folder")
    code = main(["search", "--space", "demo", "--stores", str(demo_stores), "--storage", str(tmp_path / "s"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith(f"--storage {tmp_path / 's'}: is a file, not a folder"), err
