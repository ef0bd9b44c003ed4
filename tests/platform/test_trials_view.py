"""The search's console: a table redrawn in place on a terminal, one plain line per trial event in a pipe."""

from __future__ import annotations

import io
from types import SimpleNamespace

from celltune.platform.trials_view import TrialsView


def _trial(trial_id: str, **config):
    return SimpleNamespace(trial_id=trial_id, config=config)


def _search(view: TrialsView) -> None:
    a, b = _trial("a1", **{"optimizer.lr": 0.002, "data.crop": 128}), _trial("b2", **{"optimizer.lr": 1e-4,
                                                                                      "data.crop": 96})
    view.on_trial_start(0, [], a)
    view.on_trial_start(0, [], b)
    view.on_trial_result(0, [], a, {"epoch": 10, "seg_mean": 0.41, "training_iteration": 1})
    view.on_trial_result(0, [], b, {"epoch": 10, "seg_mean": 0.20, "training_iteration": 1})
    view.on_trial_result(0, [], a, {"epoch": 20, "seg_mean": 0.38, "training_iteration": 2})
    view.on_trial_complete(0, [], b)  # stopped by ASHA
    view.on_trial_complete(0, [], a)
    view.on_experiment_end([])


def test_in_a_pipe_each_evaluation_and_each_trial_end_is_one_line():
    stream = io.StringIO()
    _search(TrialsView(name="s", metric="seg_mean", mode="max", trials=2, full_evaluations=2, stream=stream,
                       interactive=False))
    lines = stream.getvalue().splitlines()
    assert "\x1b" not in stream.getvalue() and "\r" not in stream.getvalue()
    assert lines[:3] == ["trial a1 epoch 10: seg_mean 0.410 (best 0.410)",
                         "trial b2 epoch 10: seg_mean 0.200 (best 0.200)",
                         "trial a1 epoch 20: seg_mean 0.380 (best 0.410)"]
    assert lines[3].startswith("trial b2 stopped after 10 epochs: best seg_mean 0.200; lr=0.0001 crop=96 (1/2 trials")
    assert lines[4].startswith("trial a1 done after 20 epochs: best seg_mean 0.410; lr=0.002 crop=128 (2/2 trials")
    assert len(lines) == 5


def test_on_a_terminal_the_table_is_redrawn_in_place():
    stream = io.StringIO()
    view = TrialsView(name="s", metric="seg_mean", mode="max", trials=2, full_evaluations=2, stream=stream,
                      interactive=True)
    _search(view)
    frames = stream.getvalue().split("\x1b[")
    assert len(frames) > 3  # every redraw moves the cursor back over the previous table
    final = view.table()
    assert final[0].startswith("search s: 2/2 trials done") and final[0].endswith("best seg_mean 0.410")
    assert [line.split()[:5] for line in final[2:]] == [["a1", "done", "20", "0.380", "0.410"],
                                                        ["b2", "stopped", "10", "0.200", "0.200"]]
    assert stream.getvalue().endswith("\n".join(final) + "\n")


def test_a_minimised_objective_keeps_its_lowest_value():
    view = TrialsView(name="s", metric="loss", mode="min", trials=1, stream=io.StringIO(), interactive=False)
    trial = _trial("c3")
    for value in (0.5, 0.3, 0.4, float("nan")):
        view.on_trial_result(0, [], trial, {"epoch": 1, "loss": value})
    assert (view.rows["c3"].latest, view.rows["c3"].best) == (0.4, 0.3)


def test_parameters_are_named_by_their_last_part_unless_it_repeats():
    trial = _trial("d4", **{"model.name": "unet", "scheduler.name": "cosine", "optimizer.lr": 0.001,
                            "data.crop": 96, "loss.name": "ce"})
    view = TrialsView(name="s", metric="seg_mean", mode="max", trials=1, stream=io.StringIO(), interactive=False)
    view.on_trial_start(0, [], trial)
    assert view.rows["d4"].params == "model.name=unet scheduler.name=cosine lr=0.001 crop=96 (+1)"
