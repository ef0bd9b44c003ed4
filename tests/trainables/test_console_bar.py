"""The training bar: redrawn on a terminal, one line per evaluation in a pipe, datasets' SEG in its text."""

from __future__ import annotations

import io

from celltune.trainables.console_bar import ConsoleBar
from celltune.trainables.train_loop import progress_text


def _run(bar: ConsoleBar) -> None:
    for epoch in range(1, 4):
        for _ in range(10):
            bar.update(1)
        bar.refresh()
        bar.set_description(f"epoch {epoch} SEG 0.{epoch}")
    bar.set_description("epoch 3 SEG 0.3")  # unchanged: no new line
    bar.close()


def test_in_a_pipe_the_bar_prints_one_plain_line_per_evaluation():
    stream = io.StringIO()
    _run(ConsoleBar(total=30, desc="training", stream=stream, interactive=False))
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split(" | ")[:2] for line in lines] == [
        ["epoch 1 SEG 0.1", "step 10/30"], ["epoch 2 SEG 0.2", "step 20/30"], ["epoch 3 SEG 0.3", "step 30/30"]]
    assert "ETA" in lines[0] and "ETA" not in lines[-1]  # nothing left to estimate at the end


def test_on_a_terminal_the_bar_redraws_in_place():
    stream = io.StringIO()
    _run(ConsoleBar(total=30, desc="training", stream=stream, interactive=True))
    assert "\r" in stream.getvalue() and "epoch 3 SEG 0.3" in stream.getvalue()


def test_progress_text_names_datasets_by_the_last_part_of_their_names():
    scores = {"seg/DIC-C2DH-HeLa": 0.52, "seg/Fluo-N2DH-GOWT1": 0.891, "seg_mean": 0.7055, "iou/DIC-C2DH-HeLa": 0.4}
    assert progress_text(10, 0.0234, scores, 0.74) == "epoch 10 loss 0.023 SEG HeLa 0.520 GOWT1 0.891 mean 0.706 " \
                                                       "(best 0.740)"
    clash = {"seg/A-x": 0.5, "seg/B-x": 0.25, "seg_mean": 0.375}
    assert "SEG A-x 0.500 B-x 0.250 mean 0.375" in progress_text(1, 1.0, clash, 0.375)
    assert progress_text(1, 1.0, {"seg/Fluo-N2DH-GOWT1": 0.9, "seg_mean": 0.9}, 0.9).endswith("SEG GOWT1 0.900 "
                                                                                                "(best 0.900)")
