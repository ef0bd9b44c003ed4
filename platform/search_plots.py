"""Pictures and a table of a hyperparameter search for its parent MLflow run.

Ray Tune keeps its own Optuna study inside ``OptunaSearch``; the results the driver gets back are Tune's. So the
study behind the pictures is rebuilt from the trials' samples and final objectives (:func:`study_from_trials`),
through the same define-by-run function the search used, so every parameter carries its real distribution
(log axes for log ranges, categories for choices). :func:`search_figures` draws Optuna's optimization history,
parameter importances and parallel coordinates with matplotlib (Agg, no display; plotly is not needed) and
skips, with a logged reason, what a degenerate study cannot show. :func:`trials_table` is the fixed-width
summary printed at the end of a search and logged as a text artifact::

    study = study_from_trials(space.parameters, [(sample, seg_mean_or_None, errored), ...], metric="seg_mean")
    for path, figure in search_figures(study).items():
        mlflow.log_figure(figure, path)
        plt.close(figure)
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from celltune.data_prep.common import UserInputError
from celltune.search_spaces.sampling import DefineByRun, encode_sample
from celltune.search_spaces.space import ParameterSet

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

HISTORY = "plots/optimization_history.png"
IMPORTANCES = "plots/param_importances.png"
PARALLEL = "plots/parallel_coordinates.png"
PARETO = "plots/pareto_front.png"
LEADING_COLUMNS = ("trial", "status", "epochs", "iterations", "objective")
MAX_CELL = 40


# ---------------------------------------------------------------------------------------------------------------
# Rebuilding the study
# ---------------------------------------------------------------------------------------------------------------


def study_from_trials(parameters: ParameterSet, trials: Sequence[tuple[Any, ...]], *, direction: str = "maximize",
                      metric: str = "objective") -> optuna.Study:
    """An in-memory Optuna study holding Tune's trials, in order (trial number = position in ``trials``).

    Each trial is enqueued with its encoded sample, asked, sampled through :class:`DefineByRun` (so the fixed
    values get the space's distributions) and told its outcome the way Ray's ``OptunaSearch`` does: a value
    makes it COMPLETE (also when ASHA stopped it early); no value makes it FAIL when it errored and PRUNED
    otherwise; a NaN or infinite value makes it FAIL.

    Args:
        parameters: the space's parameters (``space.parameters``).
        trials: ``(sample, objective)`` or ``(sample, objective, errored)`` per trial: the decoded sample as
            :class:`DefineByRun` returns it (dotted keys, conditional keys only when active), the final
            objective or None, and whether the trial raised (default False).
        direction: "maximize" or "minimize".
        metric: the objective's name, shown on the plots' axes.

    Raises:
        UserInputError: a bad direction or trial entry, or a sample that does not fit ``parameters`` (unknown,
            missing or inactive key, a value that is not a choice or lies outside its range).
    """
    if direction not in ("maximize", "minimize"):
        raise UserInputError(f"direction={direction!r}: expected 'maximize' or 'minimize'")
    sample_of = DefineByRun(parameters)
    with _quiet_optuna():
        study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0))
        study.set_metric_names([metric])
        for index, entry in enumerate(trials):
            sample, value, errored = _unpack(entry, f"trial {index}")
            study.enqueue_trial(encode_sample(parameters, sample, f"trial {index}"))
            trial = study.ask()
            sample_of(trial)
            if value is not None and math.isfinite(value):
                study.tell(trial, value)
            else:
                if value is not None:
                    logger.warning("trial %d: objective %r is not finite; recorded as failed", index, value)
                failed = errored or value is not None
                study.tell(trial, state=TrialState.FAIL if failed else TrialState.PRUNED)
    return study


def _unpack(entry: Any, where: str) -> tuple[Mapping[str, Any], float | None, bool]:
    if not isinstance(entry, tuple | list) or len(entry) not in (2, 3):
        raise UserInputError(f"{where}: expected (sample, objective) or (sample, objective, errored), got {entry!r}")
    sample, value, errored = (*entry, False) if len(entry) == 2 else entry
    if not isinstance(sample, Mapping):
        raise UserInputError(f"{where}: the sample must be a dict of dotted keys, got {type(sample).__name__}")
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise UserInputError(f"{where}: objective {value!r} must be a number or None")
    if not isinstance(errored, bool):
        raise UserInputError(f"{where}: errored={errored!r} must be true or false")
    return sample, None if value is None else float(value), errored


# ---------------------------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------------------------


def search_figures(study: optuna.Study) -> dict[str, Figure]:
    """Optuna's pictures of ``study`` as matplotlib figures, keyed by artifact path.

    Single-objective: ``plots/optimization_history.png``, ``plots/param_importances.png`` (PED-ANOVA) and
    ``plots/parallel_coordinates.png``. Multi-objective studies show the three for the first objective, plus
    ``plots/pareto_front.png`` (2 or 3 objectives). A picture the study cannot support (no complete trial;
    importances without two complete trials that differ in objective and in some parameter) is left out with
    an INFO log saying why; a picture Optuna fails to draw is left out with a warning. Close the figures after
    saving them (pyplot keeps them).
    """
    from optuna.visualization import matplotlib as optuna_plots

    plt = _pyplot()
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    multi = len(study.directions) > 1
    names = study.metric_names or [f"objective {i}" for i in range(len(study.directions))]
    target: Callable[[FrozenTrial], float] | None = (lambda t: t.values[0]) if multi else None
    target_name = names[0] if names else "objective"
    # PED-ANOVA takes a given target as lower-is-better, so a maximized first objective is negated for it.
    sign = -1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
    importance_target: Callable[[FrozenTrial], float] | None = (lambda t: sign * t.values[0]) if multi else None
    plots: dict[str, tuple[str | None, Callable[[], Any]]] = {
        HISTORY: (None if complete else "no complete trial",
                  lambda: optuna_plots.plot_optimization_history(study, target=target, target_name=target_name)),
        IMPORTANCES: (_importance_problem(complete, multi),
                      lambda: optuna_plots.plot_param_importances(study, target=importance_target,
                                                                  target_name=target_name)),
        PARALLEL: ("no complete trial" if not complete else
                   "no parameter" if not any(t.params for t in complete) else None,
                   lambda: optuna_plots.plot_parallel_coordinate(study, target=target, target_name=target_name)),
    }
    if multi:
        plots[PARETO] = ("no complete trial" if not complete else
                         None if len(study.directions) in (2, 3) else f"{len(study.directions)} objectives",
                         lambda: optuna_plots.plot_pareto_front(study, target_names=names))
    figures: dict[str, Figure] = {}
    for path, (problem, draw) in plots.items():
        if problem is not None:
            logger.info("search plots: %s left out: %s", path, problem)
            continue
        before = set(plt.get_fignums())
        try:
            with _quiet_optuna():
                axes = draw()
                figure = _figure_of(axes)
                figure.set_size_inches(max(8.0, 1.4 * len(_parameter_names(complete)) + 4.0) if path == PARALLEL
                                       else 8.0, 5.0)
                figure.tight_layout()
        except Exception as exc:  # a missing picture must not fail the search it illustrates
            logger.warning("search plots: %s left out: optuna could not draw it (%s: %s)", path,
                           type(exc).__name__, exc)
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            continue
        figures[path] = figure
    return figures


def _importance_problem(complete: list[FrozenTrial], multi: bool) -> str | None:
    """Why importances would be meaningless (Optuna then draws equal bars or an empty plot), or None."""
    if len(complete) < 2:
        return f"{len(complete)} complete trial(s); importances need 2"
    if not multi and len({t.value for t in complete}) < 2:
        return "every complete trial has the same objective"
    for name in _parameter_names(complete):
        values = [json.dumps(t.params[name]) for t in complete if name in t.params]
        if len(set(values)) > 1:
            return None
    return "no parameter varies among the complete trials"


def _parameter_names(trials: list[FrozenTrial]) -> list[str]:
    return sorted({name for trial in trials for name in trial.params})


def _figure_of(axes: Any) -> Figure:
    """Optuna returns one Axes, or an array of them for several panels."""
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.get_figure()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """No per-trial INFO logs and no experimental-API or degenerate-axis warnings; the caller's level returns."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message=".*identical low and high .*lims", category=UserWarning)
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes the importances",
                                    category=UserWarning)
            yield
    finally:
        optuna.logging.set_verbosity(level)


# ---------------------------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------------------------


def trials_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table of the trials, one row each, for the console and a text artifact.

    Columns: ``trial``, ``status``, ``epochs``, ``iterations``, ``objective`` first when present, then every
    other key in order of first appearance (parameters as dotted keys). Floats show 4 significant digits,
    numbers are right-aligned, lists and dicts are compact JSON, absent values are ``-``, and cells longer than
    40 characters are cut with ``...``.
    """
    if not rows:
        return "(no trials)"
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    columns = [k for k in LEADING_COLUMNS if k in keys] + [k for k in keys if k not in LEADING_COLUMNS]
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    numeric = [all(_is_number(row.get(column)) or row.get(column) is None for row in rows) for column in columns]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if right else v.ljust(w)
                         for v, w, right in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, numbers.Integral):
        text = str(int(value))
    elif isinstance(value, numbers.Real):
        text = f"{float(value):.4g}"
    elif isinstance(value, list | tuple | dict):
        text = json.dumps(value, separators=(", ", ": "), default=str)
    else:
        text = str(value)
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 3] + "..."
