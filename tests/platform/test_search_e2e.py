"""`celltune search` end to end on the demo data: trials as MLflow children, ASHA, registration, resume, failures."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from celltune.platform.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _trial_folders(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.glob("run_trial_*") if p.is_dir())


def _results(trial_folder: Path) -> list[dict]:
    path = trial_folder / "result.json"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _search_args(stores: Path, storage: Path, uri: str, name: str, *extra: str) -> list[str]:
    return ["search", "--space", "demo", "--stores", str(stores), "--storage", str(storage), "--tracking-uri", uri,
            "--name", name, "--register-as", "demo-model", *extra]


@dataclass(frozen=True)
class FinishedSearch:
    root: Path
    uri: str
    storage: Path
    finished_before_kill: dict[str, int]
    resume_output: str


@pytest.fixture(scope="module")
def demo_search(tmp_path_factory, demo_stores, ray_session) -> FinishedSearch:
    """One demo search (each costs minutes) for the whole module: killed mid-way by the driver, then resumed."""
    root = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{root}/mlflow.db"
    storage = root / "searches"
    args = _search_args(demo_stores, storage, uri, "e2e", "--max-concurrent", "1")
    env = {**os.environ, "RAY_ADDRESS": ""}
    process = subprocess.Popen([sys.executable, "-m", "celltune.platform", *args], env=env, cwd=root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # Trials run one at a time: a third trial folder means two trials have finished.
        while time.monotonic() < deadline and len(_trial_folders(storage / "e2e")) < 3:
            assert process.poll() is None, "the search ended before it could be killed"
            time.sleep(0.5)
        assert len(_trial_folders(storage / "e2e")) >= 3, "no third trial within 5 minutes"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished = {folder.name: len(_results(folder)) for folder in _trial_folders(storage / "e2e")
                if _results(folder) and _results(folder)[-1].get("done")}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = main([*args, "--resume"])
    assert code == 0, output.getvalue()
    return FinishedSearch(root, uri, storage, finished, output.getvalue())


def test_demo_search_killed_and_resumed_tracks_trials_stops_some_early_and_registers_a_loadable_candidate(
        demo_search, tmp_path):
    uri, storage, finished = demo_search.uri, demo_search.storage, demo_search.finished_before_kill
    assert finished, "no trial had finished when the search was killed"
    assert "registered models:/demo-model/1" in demo_search.resume_output
    assert "search e2e: 4 trials" in demo_search.resume_output
    for name, lines in finished.items():
        assert len(_results(storage / "e2e" / name)) == lines, f"finished trial {name} ran again"

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("celltune-search").experiment_id
    (parent,) = client.search_runs([experiment], filter_string="tags.`celltune.kind` = 'search'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    # A trial started in the instant before the kill but not yet in Tune's saved state is replaced on resume;
    # its child run is marked lost. A restarted trial logs into its own child run again.
    children = [c for c in children if c.data.tags.get("celltune.trial_status") != "lost"]
    assert len(children) == 4
    assert all("seg_mean" in child.data.metrics and child.data.params["model.name"] in ("unet", "xbnet")
               for child in children)
    stopped = [c for c in children if c.data.tags.get("celltune.early_stopped") == "true"]
    assert stopped, "ASHA stopped no trial early"
    assert all(c.info.status == "KILLED" for c in stopped)
    # Distinct steps: the trial running at the kill redoes (and logs again) the evaluation after its checkpoint.
    evaluations = {c.info.run_id: len({m.step for m in client.get_metric_history(c.info.run_id, "seg_mean")})
                   for c in children}
    assert min(evaluations.values()) < 4 == max(evaluations.values())

    # Disk budget (issue 18): one checkpoint per trial at most, none left of the stopped trials worse than the
    # best (the pruner ran across the kill and the resume), the best's kept for registration; the disk is said.
    best = parent.data.tags["celltune.best_trial"]
    cut = {c.data.tags["celltune.trial_id"] for c in stopped}
    folders = {_results(folder)[-1]["trial_id"]: folder for folder in _trial_folders(storage / "e2e")
               if _results(folder)}
    objective = {t: max(r["seg_mean"] for r in _results(folder) if "seg_mean" in r) for t, folder in folders.items()}
    checkpoints = {t: sorted(folder.glob("checkpoint_*")) for t, folder in folders.items()}
    assert cut <= set(checkpoints) and best in checkpoints
    assert all(len(kept) <= 1 for kept in checkpoints.values()), checkpoints
    assert len(checkpoints[best]) == 1
    keep = 2  # the demo space's postprocess.ensemble_members: the best two keep theirs for the ensemble choice
    better = {t: sum(objective[other] > objective[t] for other in objective) for t in objective}
    assert all(not checkpoints[t] for t in cut if better[t] >= keep), (checkpoints, objective, cut)
    assert re.search(rf"^disk: [\d.]+ [kMG]?B in {re.escape(str(storage / 'e2e'))}$", demo_search.resume_output,
                     re.MULTILINE), demo_search.resume_output[-2000:]

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert {"search/trials.txt", "search/postprocess_thresholds.json", "search/best_config.yaml",
            "search/model_options.json"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots

    version = client.get_model_version_by_alias("demo-model", "candidate")
    assert str(version.version) == "1"
    assert version.run_id in {c.info.run_id for c in children}
    thresholds = json.loads(version.tags["celltune.postprocess"])
    assert set(thresholds["per_dataset"]) == {"Synth-Round", "Synth-Dense"}
    assert {"min_area", "hole_area"} <= set(thresholds["default"])
    # the best alone or with the next best, with or without TTA: the option registered says which it was
    assert version.tags["celltune.ensemble_members"] in ("1", "2") and version.tags["celltune.tta"] in ("true", "false")
    metrics = json.loads(version.tags["celltune.metrics"])
    assert 0.0 < float(version.tags["celltune.seg_mean"]) == pytest.approx(metrics["seg_mean"])
    assert metrics["seg_mean"] >= metrics["seg_untuned_mean"]

    # A fresh process loads the candidate by alias (celltune's loader and MLflow's pyfunc) and predicts.
    script = textwrap.dedent(f"""
        import mlflow, numpy as np
        from celltune.platform.model_registry import load_model
        loaded = load_model("models:/demo-model@candidate", {uri!r})
        assert loaded.card.postprocess_params("Synth-Round") == {thresholds["per_dataset"]["Synth-Round"]!r}
        mlflow.set_tracking_uri({uri!r})
        model = mlflow.pyfunc.load_model("models:/demo-model@candidate")
        frames = np.random.default_rng(0).integers(0, 255, size=(2, 64, 80)).astype(np.float32)
        labels = model.predict(frames)
        print("LABELS", labels.shape, labels.dtype)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LABELS (2, 64, 80) int32" in done.stdout


def test_a_killed_trial_worker_restarts_from_its_checkpoint(tmp_path, demo_stores, ray_session):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = tmp_path / "searches"
    killed: list[int] = []

    def kill_first_trial_after_its_second_report() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            for folder in _trial_folders(storage / "workerkill"):
                results = _results(folder)
                if len(results) >= 2 and not results[-1].get("done"):
                    os.kill(int(results[-1]["pid"]), signal.SIGKILL)
                    killed.append(int(results[-1]["pid"]))
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_first_trial_after_its_second_report, daemon=True)
    killer.start()
    code = main(_search_args(demo_stores, storage, uri, "workerkill", "--trials", "1", "--max-concurrent", "1"))
    killer.join(timeout=5)
    assert code == 0
    assert killed, "no trial worker was killed"
    for folder in _trial_folders(storage / "workerkill"):
        results = _results(folder)
        epochs = [int(r["epoch"]) for r in results]
        assert epochs == sorted(set(epochs)), f"{folder.name} repeated epochs {epochs}"
        if any(int(r["pid"]) in killed for r in results):
            pids = {int(r["pid"]) for r in results}
            assert len(pids) == 2, "the killed trial did not continue in a new process"
            assert epochs[-1] == 4 and epochs[0] == 1, epochs


def test_promote_predict_and_evaluate_a_held_out_sequence_with_the_searched_model(demo_search, tmp_path, capsys):
    """Issue 6's path after a search: promote the candidate, predict a sequence no trial saw, score it."""
    from celltune.data_prep.synth import SynthSpec, generate_dataset
    from celltune.platform.ctc_results import read_ctc_result
    from celltune.platform.demo import DEMO_DATASETS, HOLDOUT_SEED
    from celltune.platform.evaluate import evaluate_results

    uri = demo_search.uri
    holdout = {**DEMO_DATASETS[0], "sequences": 1, "seed": HOLDOUT_SEED}
    generate_dataset(tmp_path / "holdout", SynthSpec(**holdout))
    dataset = tmp_path / "holdout" / holdout["name"]

    assert main(["models", "promote", "demo-model", "1", "--reason", "best of the demo search",
                 "--tracking-uri", uri]) == 0
    version = mlflow.MlflowClient(uri).get_model_version_by_alias("demo-model", "champion")
    assert str(version.version) == "1"
    assert version.tags["celltune.promoted.champion.reason"] == "best of the demo search"

    out = tmp_path / "01_RES"
    assert main(["predict", "--model", "models:/demo-model@champion", "--input", str(dataset / "01"),
                 "--out", str(out), "--dataset", holdout["name"], "--tracking-uri", uri, "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("mask*.tif")) == [f"mask{t:03d}.tif" for t in range(holdout["frames"])]
    result = read_ctc_result(out)  # raises on an invalid folder (labels vs. res_track.txt)
    assert len(result.masks) == holdout["frames"] and result.tracks.shape[1] == 4
    capsys.readouterr()

    # `evaluate` runs py-ctcmetrics' validity checks on the folder (an invalid result is an error, exit 2).
    assert main(["evaluate", "--res", str(out), "--gt", str(dataset / "01_GT"), "--no-progress"]) == 0
    print(capsys.readouterr().out)  # the numbers, in the test log
    (row,) = evaluate_results(out, dataset / "01_GT").rows
    scores = {measure: row.measure(measure) for measure in ("SEG", "DET", "TRA")}
    assert all(0.0 <= value <= 1.0 for value in scores.values()), scores
    assert scores["SEG"] > 0.3 and scores["DET"] > 0.5, f"the searched model on the held-out sequence: {scores}"

    assert main(["evaluate", "--model", "models:/demo-model@champion", "--data", str(dataset),
                 "--tracking-uri", uri, "--no-progress"]) == 0
    logged = mlflow.MlflowClient(uri).get_run(version.run_id).data.metrics
    assert any(key.startswith(f"eval/{holdout['name']}/01/SEG") for key in logged), sorted(logged)[:20]
    assert main(["models", "show", "demo-model@champion", "--tracking-uri", uri]) == 0
    assert "SEG" in capsys.readouterr().out
