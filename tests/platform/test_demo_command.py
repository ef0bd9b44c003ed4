"""The README's main job, `celltune demo`, end to end on a fresh working folder, as a user's shell runs it."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import proc_sockets
import pytest

from celltune.platform.ctc_results import read_ctc_result
from celltune.trainables.loopback_rendezvous import is_loopback

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_demo_generates_searches_registers_predicts_and_scores(tmp_path):
    workdir = tmp_path / "celltune-demo"
    # a pipe, as in CI, a log file or `ray job submit`: plain lines, nothing from the libraries underneath
    demo = subprocess.Popen(_demo_command(workdir), env=_ENV, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    listening: set[tuple[str, str]] = set()  # (process name, address) of every listening socket the demo opened
    watcher = threading.Thread(target=_watch_sockets, args=(demo, listening), daemon=True)
    watcher.start()
    stdout, _ = demo.communicate(timeout=900)
    watcher.join(timeout=5)
    out = stdout.decode()  # bytes as written: text mode would turn a redraw's carriage return into a newline
    assert demo.returncode == 0, out
    assert listening, "the watcher saw no listening socket at all (Ray's own servers listen)"
    exposed = sorted(item for item in listening if not is_loopback(item[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"
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
    _assert_quiet_with_the_noise_in_the_log(out, workdir)


def test_the_demo_on_a_terminal_draws_live_views_and_keeps_the_noise_in_its_log(tmp_path):
    """The same job on a pseudo-terminal, as a person runs it: bars and the trials table redrawn in place."""
    workdir = tmp_path / "celltune-demo"
    controller, terminal = pty.openpty()
    demo = subprocess.Popen(_demo_command(workdir), env={**_ENV, "TERM": "xterm", "COLUMNS": "120"}, cwd=tmp_path,
                            stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the demo and its children closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    out = b"".join(chunks).decode(errors="replace")
    assert demo.wait(timeout=900) == 0, out[-3000:]
    # a terminal turns every newline into \r\n; a redraw is a carriage return or cursor move without one
    assert re.search(r"\r(?!\n)|\x1b\[", out), "no live view redrawn on a terminal"
    assert "registered models:/celltune-demo/1 (alias candidate" in out
    assert "predicted with models:/celltune-demo/1" in out
    _assert_quiet_with_the_noise_in_the_log(out, workdir)


_ENV = {**os.environ, "RAY_ADDRESS": ""}


def _demo_command(workdir) -> list[str]:
    return [sys.executable, "-m", "celltune.platform", "demo", "--workdir", str(workdir)]


def _assert_quiet_with_the_noise_in_the_log(out: str, workdir) -> None:
    for noise in ("WARNING", "Warning:", "Checkpoint successfully created", "pid=", "Trial status", "Traceback",
                  "Configuration for experiment", "tensorboard"):
        assert noise not in out, f"{noise!r} on the console:\n{out}"
    log = workdir / "celltune.log"
    assert f"library output in {log.resolve()}" in out.replace("\r\n", "\n")
    assert log.read_text().strip(), "the libraries' lines were not captured"


def _watch_sockets(process: subprocess.Popen, seen: set[tuple[str, str]]) -> None:
    """Every 0.5 s until ``process`` ends: the listening sockets of it and its descendants (Ray's servers,
    trial workers, the rendezvous of each training run)."""
    while process.poll() is None:
        for pid, address in proc_sockets.listening_sockets(proc_sockets.process_tree(process.pid)):
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                name = str(pid)
            seen.add((name, address))
        threading.Event().wait(0.5)
