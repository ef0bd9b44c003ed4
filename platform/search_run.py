"""Driver side of `celltune search`: the parent MLflow run, the Tune search, the threshold study, registration.

A search lives in Ray's storage (``<storage>/<name>``: searcher state, trial checkpoints; what ``--resume``
restores) and in MLflow: one parent run tagged ``celltune.search_name=<name>`` in the ``celltune-search``
experiment, with one child run per trial (found again by ``celltune.trial_id`` when a trial restarts). After
the trials, the best checkpoint's validation probabilities are cached and the post-processing thresholds are
tuned on them per dataset; the model is then registered with those thresholds and the alias ``candidate``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ray.tune import Callback

from celltune.data_prep.common import UserInputError, one_line
from celltune.platform.console import LOG_FILE
from celltune.platform.fine_tune import load_parent, provenance_tags, with_parent_weights
from celltune.platform.mlflow_observer import MlflowObserver
from celltune.platform.model_registry import load_model, register_checkpoint
from celltune.platform.tracking import (
    RunLogger,
    absolute_tracking_uri,
    default_tracking_uri,
    flatten_params,
    mask_secrets,
    metric_name,
    when_store_free,
)
from celltune.platform.tracking import experiment_id as experiment_id_of
from celltune.platform.train_run import check_run_name
from celltune.platform.trials_view import TrialsView
from celltune.search_spaces.checkpoint_pruning import folder_bytes, format_bytes, ran_full_length
from celltune.search_spaces.cost_bound import best_within, pareto_front, trial_gmac
from celltune.search_spaces.space import SearchSpace
from celltune.search_spaces.tuner import (
    SearchSettings,
    asha_units,
    build_tuner,
    checkpoint_of,
    concurrency_for,
    evaluations_per_trial,
    experiment_path,
    search_exists,
    trial_footprint,
    trial_resources,
)
from celltune.trainables.config import TrainConfig

logger = logging.getLogger(__name__)
TUNE_NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"

DEFAULT_EXPERIMENT = "celltune-search"
SEARCH_TAG = "celltune.search_name"
TRIAL_TAG = "celltune.trial_id"
REGISTERED_TAG = "celltune.registered_version"
CHILD_RUN_WAIT_S = 30.0
BASE_TREE_FILE = "celltune_base_config.json"


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl+C during a search: Tune stops the trials and returns, so the driver says how to continue."""


@dataclass(frozen=True)
class MlflowTrialHooks:
    """Gives every trial its child run under the search's parent run (the same one again after a restart)."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    search_name: str

    def child_run_id(self, trial_id: str, trial_name: str | None = None,
                     sample: Mapping[str, Any] | None = None) -> str | None:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.tracking_uri)
        found = when_store_free(lambda: client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
            max_results=1,
        ), "find a trial's run", self.tracking_uri)
        if found:
            return found[0].info.run_id
        if trial_name is None:
            return None
        tags = {"mlflow.parentRunId": self.parent_run_id, "mlflow.runName": trial_name, "celltune.kind": "trial",
                TRIAL_TAG: trial_id, SEARCH_TAG: self.search_name,
                "celltune.sample": json.dumps(dict(sample or {}), sort_keys=True, default=str)[:5000]}
        return when_store_free(lambda: client.create_run(self.experiment_id, run_name=trial_name, tags=tags),
                               "create a trial's run", self.tracking_uri).info.run_id

    def observer_for(self, trial_id: str, trial_name: str, sample: Mapping[str, Any],
                     config: TrainConfig) -> MlflowObserver:
        """Runs in the trial's process: the driver's :class:`TrialRunCallback` creates the child run and logs its
        params (masked with the driver's environment, which knows the secrets); wait for it briefly."""
        deadline = time.monotonic() + CHILD_RUN_WAIT_S
        run_id = self.child_run_id(trial_id)
        while run_id is None and time.monotonic() < deadline:
            time.sleep(0.5)
            run_id = self.child_run_id(trial_id)
        run_id = run_id or self.child_run_id(trial_id, trial_name, sample)
        run_logger = RunLogger(self.tracking_uri, run_id)
        run_logger.set_status("RUNNING")
        return MlflowObserver(run_logger, log_config=False)


class TrialRunCallback(Callback):
    """Tune callback on the driver: a child run per trial, with the trial's params and config, before it trains.

    Restored with the search on ``--resume`` (Tune keeps its callbacks), so trials started afterwards get theirs.
    """

    def __init__(self, hooks: MlflowTrialHooks, base_tree: Mapping[str, Any]) -> None:
        self.hooks = hooks
        self.base_tree = base_tree

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        from celltune.search_spaces.sampling import apply_sample

        run_id = self.hooks.child_run_id(trial.trial_id, str(trial), trial.config)
        run = RunLogger(self.hooks.tracking_uri, run_id)
        if run.client().get_run(run_id).data.params:
            return  # a restarted trial
        resolved = apply_sample(self.base_tree, trial.config, source=f"trial {trial.trial_id}").model_dump(mode="json")
        run.log_params(flatten_params(resolved))
        run.log_dict(resolved, "config/train_config.yaml")


@dataclass
class TrialRow:
    trial_id: str
    status: str  # completed | stopped early | failed
    evaluations: int
    objective: float | None  # best value of the objective over the trial's evaluations
    sample: dict[str, Any]
    checkpoint: Any  # ray.tune.Checkpoint (local or remote storage) or None
    error: str | None = None
    gmac: float | None = None  # convolution GMac per 512x512 frame of the trial's network
    pareto: bool = False  # on the front of the objective against gmac

    def as_row(self, objective_name: str) -> dict[str, Any]:
        return {"trial": self.trial_id, "status": self.status, "evaluations": self.evaluations,
                objective_name: self.objective, **self.sample}


@dataclass
class SearchResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    path: str
    trials: list[TrialRow]
    best: TrialRow | None
    scores: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)
    registered_name: str | None = None
    registered_version: str | None = None
    disk_bytes: int | None = None  # files under ``path`` at the end (None: remote storage, not measured)


def resolve_stores(space: SearchSpace) -> SearchSpace:
    """The space with absolute store paths (trials run in other working directories), checked to hold frames."""
    from dataclasses import replace

    from celltune.platform.train_run import check_config

    tree = json.loads(json.dumps(space.base_tree, default=str))
    tree["data"]["stores"] = [str(Path(store).resolve()) for store in tree["data"]["stores"]]
    resolved = replace(space, base_tree=tree)
    check_config(resolved.base_config())
    return resolved


def search_plan(space: SearchSpace, settings: SearchSettings, available: Mapping[str, float]) -> dict[str, Any]:
    """What ``--dry-run`` prints: the trials, their resources, concurrency and early stopping."""
    base = space.base_config()
    return {
        "space": space.name, "source": str(space.source), "trials": settings.trials, "seed": settings.seed,
        "objective": space.objective.model_dump(),
        "parameters": space.parameters.keys(),
        "per_trial": {"function": trial_resources(base), "occupies": trial_footprint(base)},
        "concurrency": settings.max_concurrent or concurrency_for(trial_footprint(base), available, settings.trials),
        "evaluations_per_trial": evaluations_per_trial(base),
        "minutes_per_trial": base.training.max_minutes,
        "early_stopping": space.early_stopping.model_dump() if space.early_stopping else None,
        "asha": asha_units(base, space.early_stopping) if space.early_stopping else None,
        "postprocess_study": {"trials": space.postprocess.trials, "parameters": space.postprocess.parameters.keys()}
        if space.postprocess else None,
        "checkpoints_per_trial": settings.checkpoints_to_keep,
        "retries_per_trial": "forever" if settings.max_failures == -1 else settings.max_failures,
        "storage": experiment_path(settings),
    }


@contextlib.contextmanager
def _legacy_tune_output():
    previous = os.environ.get(TUNE_NEW_OUTPUT_ENV)
    os.environ[TUNE_NEW_OUTPUT_ENV] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(TUNE_NEW_OUTPUT_ENV, None)
        else:
            os.environ[TUNE_NEW_OUTPUT_ENV] = previous


def default_search_name(space: SearchSpace) -> str:
    return time.strftime(f"search-{space.name}-%Y%m%d-%H%M%S")


def search_log_file(storage: str, name: str) -> Path:
    """Where the libraries' output of a search goes: beside Tune's state for a local storage, else here."""
    if "://" in str(storage):
        return Path(f"celltune-{name}.log").resolve()
    return Path(storage).resolve() / name / LOG_FILE


def run_search(space: SearchSpace, *, storage: str, name: str | None = None, resume: bool = False,
               trials: int | None = None, seed: int = 0, tracking_uri: str | None = None,
               experiment: str = DEFAULT_EXPERIMENT, address: str | None = None,
               register_as: str | None = None, max_concurrent: int | None = None,
               show_progress: bool = True, checkpoints_to_keep: int = 1, max_failures: int = 2) -> SearchResult:
    """Run (or with ``resume`` continue) a search, tune thresholds, register the best model.

    ``checkpoints_to_keep``: per trial (a resumed search keeps what it started with); checkpoints of trials ASHA
    stopped early are deleted unless the trial is the best (:mod:`celltune.search_spaces.checkpoint_pruning`).
    ``max_failures``: restarts of a trial from its last checkpoint after its worker or node is lost (-1: any).
    """
    import mlflow

    # Trials run in their own folders: a relative sqlite:///mlflow.db would give each its own database.
    tracking_uri = absolute_tracking_uri(tracking_uri or default_tracking_uri())
    if resume and not name:
        raise UserInputError("--resume needs --name of the search to continue")
    if name is not None:
        check_run_name(name)
    space = resolve_stores(space)
    storage = storage if "://" in str(storage) else str(Path(storage).resolve())
    name = name or default_search_name(space)
    settings = SearchSettings(storage_path=storage, name=name, trials=trials or space.trials, seed=seed,
                              max_concurrent=max_concurrent, checkpoints_to_keep=checkpoints_to_keep,
                              max_failures=max_failures, verbose=0)  # TrialsView instead of Tune's boxes
    if not resume and search_exists(settings):
        raise UserInputError(f"--name: a search named {name!r} already exists under {storage}; "
                             "pass --resume to continue it or choose another name")
    if resume and not search_exists(settings):
        raise UserInputError(f"--resume: no search named {name!r} under {storage}")
    if resume:  # the trials left continue from the base config the search started with (its --set included)
        space = replace(space, base_tree=read_base_tree(settings))
    else:
        space = _with_parent_weights(space, settings, tracking_uri)
        write_base_tree(settings, space.base_tree)
    connect_ray(address)

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = experiment_id_of(client, experiment, tracking_uri)
    parent_run_id = _parent_run(client, tracking_uri, experiment_id, name, space, settings, resume=resume)
    hooks = MlflowTrialHooks(tracking_uri, experiment_id, parent_run_id, name)

    try:
        callbacks: list = [TrialRunCallback(hooks, space.base_tree)]
        if show_progress:
            callbacks.append(TrialsView(name=name, metric=space.objective.metric, mode=space.objective.mode,
                                        trials=settings.trials,
                                        full_evaluations=evaluations_per_trial(space.base_config())))
        tuner = build_tuner(space, settings, hooks=hooks, resume=resume, callbacks=callbacks)
        with _legacy_tune_output():  # whose verbose=0 is silent; the new engine's still prints its header boxes
            grid = tuner.fit()
        if grid.num_terminated + grid.num_errors < len(grid) or (not resume and len(grid) < settings.trials):
            # Tune returns normally on Ctrl+C: trials are unfinished, so nothing may be scored or registered yet.
            client.set_terminated(parent_run_id, status="KILLED")
            raise SearchInterrupted(f"search {name} stopped with trials unfinished; continue it with "
                                    f"--name {name} --resume")
        rows = _trial_rows(grid, space)
        for row in pareto_rows(rows, space):
            row.pareto = True
        _close_child_runs(client, hooks, rows)
        best = _best_trial(rows, space)
        result = SearchResult(name=name, parent_run_id=parent_run_id, tracking_uri=tracking_uri,
                              path=experiment_path(settings), trials=rows, best=best)
        _log_search_summary(RunLogger(tracking_uri, parent_run_id), space, rows, best)
        if best is not None and best.checkpoint is not None:
            _finish_best(result, space, client, hooks, register_as or f"celltune-{space.name}", seed=seed,
                         show_progress=show_progress)
    except (UserInputError, SearchInterrupted):
        raise
    except BaseException:
        client.set_terminated(parent_run_id, status="FAILED")
        raise
    client.set_terminated(parent_run_id, status="FINISHED")
    result.disk_bytes = folder_bytes(result.path)
    return result


def _with_parent_weights(space: SearchSpace, settings: SearchSettings, tracking_uri: str) -> SearchSpace:
    """Under ``init``: the parent model checked and its weights written beside the search's state, where every
    trial reads them (so the storage must be a local or shared folder)."""
    base = space.base_config()
    parent = load_parent(base, tracking_uri)
    if parent is None:
        return space
    folder = experiment_path(settings)
    if "://" in folder:
        raise UserInputError(f"init.model: a search that fine-tunes needs a folder as --storage (got {folder}), "
                             "which its trials read the parent's weights from")
    tree = json.loads(json.dumps(space.base_tree, default=str))
    tree["init"] = with_parent_weights(base, parent, Path(folder)).init.model_dump(mode="json")
    return replace(space, base_tree=tree)


def _base_tree_location(settings: SearchSettings):
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(experiment_path(settings))
    return filesystem, root, f"{root}/{BASE_TREE_FILE}"


def write_base_tree(settings: SearchSettings, tree: Mapping[str, Any]) -> None:
    """Keep the search's effective base config next to Tune's state (unmasked: it is the user's own storage)."""
    filesystem, root, path = _base_tree_location(settings)
    filesystem.create_dir(root, recursive=True)
    scratch = f"{path}.tmp"
    with filesystem.open_output_stream(scratch) as handle:
        handle.write(json.dumps(tree, indent=2, default=str).encode())
    filesystem.move(scratch, path)


def read_base_tree(settings: SearchSettings) -> dict[str, Any]:
    filesystem, _, path = _base_tree_location(settings)
    try:
        with filesystem.open_input_stream(path) as handle:
            return json.loads(handle.read().decode())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"--resume: {path} is missing or unreadable ({exc}); the search cannot continue "
                             "with the config it started with") from None


def connect_ray(address: str | None) -> None:
    """Join ``address`` (or start local Ray); an unreachable cluster is the user's input, not our failure."""
    from celltune.data_prep.ray_session import ensure_ray

    try:
        ensure_ray(address)
    except ConnectionError as exc:
        raise UserInputError(f"--address {address}: cannot connect to a Ray cluster there "
                             f"({one_line(exc, 200)})") from None


def _parent_run(client, tracking_uri: str, experiment_id: str, name: str, space: SearchSpace,
                settings: SearchSettings, *, resume: bool) -> str:
    found = client.search_runs([experiment_id], filter_string=f"tags.`{SEARCH_TAG}` = '{name}' "
                               "and tags.`celltune.kind` = 'search'", max_results=1)
    if found and not resume:
        raise UserInputError(f"--name: the MLflow experiment already has a search run named {name!r} "
                             f"({found[0].info.run_id}); choose another name or pass --resume")
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run_id = client.create_run(experiment_id, run_name=name,
                               tags={"mlflow.runName": name, "celltune.kind": "search", SEARCH_TAG: name,
                                     **provenance_tags(space.base_tree)}).info.run_id
    run = RunLogger(tracking_uri, run_id)
    run.log_params(flatten_params({"search": {"space": space.name, "trials": settings.trials, "seed": settings.seed,
                                              "objective": space.objective.model_dump(),
                                              "early_stopping": space.early_stopping.model_dump()
                                              if space.early_stopping else "none",
                                              "storage": experiment_path(settings)}}))
    run.log_dict(space.base_tree, "search/base_config.yaml")
    if space.source is not None:  # the space file as written, with any secret value masked
        run.client().log_text(run_id, mask_secrets(Path(space.source).read_text()), f"search/{Path(space.source).name}")
    return run_id


def _trial_rows(grid, space: SearchSpace) -> list[TrialRow]:
    metric = space.objective.metric
    best_key = "best/seg_mean" if metric == "seg_mean" and space.objective.mode == "max" else None
    base = space.base_config()
    full = evaluations_per_trial(base)
    budget_s = base.training.max_minutes * 60 if base.training.max_minutes else None
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        evaluations = int(metrics.get("training_iteration", 0) or 0)
        history = result.metrics_dataframe
        if best_key and best_key in metrics:
            objective = float(metrics[best_key])
        elif history is not None and metric in getattr(history, "columns", []):
            column = history[metric].dropna()
            objective = float(column.max() if space.objective.mode == "max" else column.min()) if len(column) else None
        else:
            objective = None
        if result.error is not None:
            status = "failed"
        elif ran_full_length(metrics, full_evaluations=full, budget_s=budget_s):  # all its epochs or minutes
            status = "completed"
        else:
            status = "stopped early"
        trial_id = metrics.get("trial_id") or Path(result.path).name
        rows.append(TrialRow(trial_id=str(trial_id), status=status, evaluations=evaluations, objective=objective,
                             sample=dict(result.config or {}), checkpoint=checkpoint_of(result),
                             error=None if result.error is None else one_line(result.error, 500),
                             gmac=_trial_gmac(space, dict(result.config or {}))))
    return sorted(rows, key=lambda row: row.trial_id)


def _trial_gmac(space: SearchSpace, sample: dict[str, Any]) -> float | None:
    try:
        return trial_gmac(space.base_tree, sample)
    except Exception as exc:  # a cost is a nicety unless the space bounds it (then the trial cannot be chosen)
        logger.warning("no cost for a trial of %s: %s", space.name, one_line(exc))
        return None


def _best_trial(rows: list[TrialRow], space: SearchSpace) -> TrialRow | None:
    """The best trial with a checkpoint, within the space's latency bound when it has one."""
    bound = space.objective.max_gmac
    points = [(index, row.objective, row.gmac if row.gmac is not None else float("inf"))
              for index, row in enumerate(rows) if row.objective is not None and row.checkpoint is not None]
    chosen = best_within(points, space.objective.mode, bound)
    if chosen is None and points and bound is not None:
        logger.warning("no trial's network is within objective.max_gmac=%g GMac per 512x512 frame; nothing "
                       "registered", bound)
    return None if chosen is None else rows[chosen]


def pareto_rows(rows: list[TrialRow], space: SearchSpace) -> list[TrialRow]:
    """The trials on the Pareto front of the objective against GMac per frame, cheapest first."""
    points = [(index, row.objective, row.gmac) for index, row in enumerate(rows)
              if row.objective is not None and row.gmac is not None]
    return [rows[index] for index in pareto_front(points, space.objective.mode)]


def _close_child_runs(client, hooks: MlflowTrialHooks, rows: list[TrialRow]) -> None:
    statuses = {"completed": "FINISHED", "stopped early": "KILLED", "failed": "FAILED"}
    for row in rows:
        run_id = hooks.child_run_id(row.trial_id)
        if run_id is None:
            continue
        client.set_tag(run_id, "celltune.trial_status", row.status)
        client.set_tag(run_id, "celltune.early_stopped", str(row.status == "stopped early").lower())
        if row.error:
            client.set_tag(run_id, "celltune.error", mask_secrets(row.error)[:5000])
        client.set_terminated(run_id, status=statuses[row.status])
    # A trial started just before the driver died, but not yet in Tune's saved state, is replaced on --resume;
    # its child run stays, marked so nobody mistakes it for a trial of the search.
    known = {row.trial_id for row in rows}
    children = client.search_runs([hooks.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{hooks.parent_run_id}'")
    for child in children:
        if child.data.tags.get(TRIAL_TAG) not in known:
            client.set_tag(child.info.run_id, "celltune.trial_status", "lost")
            client.set_terminated(child.info.run_id, status="KILLED")


def _log_search_summary(run: RunLogger, space: SearchSpace, rows: list[TrialRow], best: TrialRow | None) -> None:
    import matplotlib.pyplot as plt

    from celltune.platform.search_plots import search_figures, study_from_trials, trials_table

    objective = space.objective.metric
    table = trials_table([row.as_row(objective) for row in rows])
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "trials.txt"
        path.write_text(table + "\n")
        run.log_artifact(path, "search")
    run.log_dict({"trials": [row.as_row(objective) | {"error": row.error} for row in rows]}, "search/trials.json")
    counts = {status: sum(row.status == status for row in rows) for status in ("completed", "stopped early", "failed")}
    run.log_metrics({f"trials/{k.replace(' ', '_')}": v for k, v in counts.items()}, step=0)
    front = pareto_rows(rows, space)
    run.log_dict({"max_gmac": space.objective.max_gmac,
                  "front": [{"trial": r.trial_id, objective: r.objective, "gmac_512": r.gmac} for r in front]},
                 "search/pareto_front.json")
    if best is not None:
        run.log_metrics({f"best/{metric_name(objective)}": best.objective}, step=0)
        run.set_tags({"celltune.best_trial": best.trial_id})
        run.log_dict(best.sample, "search/best_sample.json")
    direction = "maximize" if space.objective.mode == "max" else "minimize"
    study = study_from_trials(space.parameters, [(row.sample, row.objective, row.status == "failed") for row in rows],
                              direction=direction, metric=objective)
    for artifact, figure in search_figures(study).items():
        run.log_figure(figure, artifact)
        plt.close(figure)


def _finish_best(result: SearchResult, space: SearchSpace, client, hooks: MlflowTrialHooks, model_name: str, *,
                 seed: int, show_progress: bool) -> None:
    """Tune the best model's thresholds on cached validation probabilities, then register it (once)."""
    best = result.best
    with tempfile.TemporaryDirectory(prefix="celltune-best-") as scratch:
        checkpoint_dir = Path(best.checkpoint.to_directory(str(Path(scratch) / "best")))  # also from s3://
        _tune_and_register(result, space, client, hooks, model_name, checkpoint_dir, seed=seed,
                           show_progress=show_progress, scratch=Path(scratch))


def _tune_and_register(result: SearchResult, space: SearchSpace, client, hooks: MlflowTrialHooks, model_name: str,
                       checkpoint_dir: Path, *, seed: int, show_progress: bool, scratch: Path) -> None:
    parent = client.get_run(result.parent_run_id)
    best = result.best
    loaded = load_model(str(checkpoint_dir))
    card = loaded.card
    config = TrainConfig.model_validate(card.train_config)
    start = dict(card.postprocess)
    chosen_dir, choice_tags = checkpoint_dir, {}
    if space.postprocess is not None:
        from celltune.search_spaces.postprocess_study import (
            ValidationProbabilities,
            predict_validation,
            tune_postprocess,
        )

        # Next to the search on local storage (a resumed search reuses it), else in the temp folder.
        folder = Path(result.path) if "://" not in result.path else Path(tempfile.gettempdir())
        cache = folder / f"validation-probabilities-{best.trial_id}.npz"
        if cache.is_file():
            probabilities = ValidationProbabilities.load(cache)
        else:
            probabilities = predict_validation(loaded.model, card, config.data, show_progress=show_progress)
            probabilities.save(cache)
        if space.postprocess.chooses_model:  # the best alone, or ensembles of the best trials, with/without TTA
            from celltune.platform.search_ensemble import choose_model

            picked = choose_model(result.trials, best, checkpoint_dir, probabilities, space, scratch, seed=seed,
                                  show_progress=show_progress)
            choice, chosen_dir = picked.chosen.choice, picked.folder
            choice_tags = {"celltune.ensemble_members": str(picked.chosen.members),
                           "celltune.tta": str(picked.chosen.tta).lower()}
            RunLogger(result.tracking_uri, result.parent_run_id).log_dict(picked.table(),
                                                                          "search/model_options.json")
        else:
            choice = tune_postprocess(probabilities, space.postprocess.for_target_kind(card.target_kind),
                                      trials=space.postprocess.trials, start_params=start, seed=seed,
                                      show_progress=show_progress)
        default, per_dataset, scores = choice.default, choice.per_dataset, dict(choice.scores)
        _log_threshold_study(RunLogger(result.tracking_uri, result.parent_run_id), choice)
    else:
        default, per_dataset = start, {}
        scores = {k: v for k, v in card.best.items() if k.startswith(("seg", "iou"))}
    result.scores, result.thresholds = scores, {"default": default, "per_dataset": per_dataset}
    parent_logger = RunLogger(result.tracking_uri, result.parent_run_id)
    parent_logger.log_metrics({f"tuned/{k}": v for k, v in scores.items()}, step=0)
    parent_logger.log_dict(result.thresholds, "search/postprocess_thresholds.json")
    parent_logger.log_dict(card.train_config, "search/best_config.yaml")

    registered = parent.data.tags.get(REGISTERED_TAG) or _version_of_search(client, model_name,
                                                                             result.parent_run_id)
    if registered:  # a resumed search that had already registered its model
        client.set_tag(result.parent_run_id, REGISTERED_TAG, registered)
        result.registered_name, result.registered_version = registered.split("/", 1)
        return
    child = hooks.child_run_id(best.trial_id)
    if child is None:
        raise RuntimeError(f"the best trial {best.trial_id} has no MLflow run under search run {result.parent_run_id}")
    version = register_checkpoint(
        chosen_dir, name=model_name, run_id=child, tracking_uri=result.tracking_uri,
        postprocess_default=default, postprocess_per_dataset=per_dataset, metrics=scores,
        tags={"celltune.search": result.name, "celltune.search_run_id": result.parent_run_id,
              "celltune.trial_id": best.trial_id, **choice_tags},
    )
    client.set_tag(result.parent_run_id, REGISTERED_TAG, f"{model_name}/{version.version}")
    result.registered_name, result.registered_version = model_name, str(version.version)


def _version_of_search(client, model_name: str, parent_run_id: str) -> str | None:
    """``NAME/VERSION`` this search registered before its driver died, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None
    for version in versions:
        if version.tags.get("celltune.search_run_id") == parent_run_id:
            return f"{model_name}/{version.version}"
    return None


def _log_threshold_study(run: RunLogger, choice) -> None:
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    for dataset, study in choice.studies.items():
        try:
            axes = plot_optimization_history(study)
        except Exception as exc:  # a plot is a nicety; never fail a search over it
            logger.warning("no threshold-study plot for %s: %s", dataset, exc)
            continue
        run.log_figure(axes.figure, f"postprocess/{metric_name(dataset)}_history.png")
        plt.close(axes.figure)


def search_summary(result: SearchResult) -> str:
    """What a user wants after a search: the trials, the winner, the thresholds and where to look."""
    from celltune.platform.search_plots import trials_table
    from celltune.platform.tracking import redact_uri

    lines = [f"search {result.name}: {len(result.trials)} trials "
             f"({sum(t.status == 'completed' for t in result.trials)} completed, "
             f"{sum(t.status == 'stopped early' for t in result.trials)} stopped early by ASHA, "
             f"{sum(t.status == 'failed' for t in result.trials)} failed)"]
    lines.append(trials_table([t.as_row("objective") for t in result.trials]))
    if result.best is not None:
        cost = "" if result.best.gmac is None else f", {result.best.gmac:.2f} GMac per 512x512 frame"
        lines.append(f"best trial {result.best.trial_id}: objective {result.best.objective:.4f}{cost}")
    front = sorted((t for t in result.trials if t.pareto), key=lambda t: t.gmac)
    if len(front) > 1:  # a trade-off to choose from: cheaper networks that score less
        lines.append("objective against cost (Pareto front): " + ", ".join(
            f"{t.trial_id} {t.objective:.3f} at {t.gmac:.2f} GMac" for t in front))
    if result.scores:
        lines.append("validation with tuned thresholds: " + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(result.scores.items()) if k.startswith("seg")))
    if result.registered_version:
        lines.append(f"registered models:/{result.registered_name}/{result.registered_version} "
                     f"(alias candidate: models:/{result.registered_name}@candidate)")
    lines.append(f"MLflow parent run {result.parent_run_id} in {redact_uri(result.tracking_uri)}")
    if result.disk_bytes is not None:
        lines.append(f"disk: {format_bytes(result.disk_bytes)} in {result.path}")
    lines.append(f"resume or inspect: {result.path}")
    return "\n".join(lines)
