"""Read registered celltune models out of the MLflow Model Registry and render them as plain-text tables.

Everything shown comes from the model-version tags that ``celltune search`` writes (see
``celltune.platform.model_registry``) and from the metrics ``celltune evaluate --model`` logs to the version's
run, so nothing is downloaded. A tag that is missing or not valid JSON shows as ``-`` instead of failing, since
versions registered by hand or by older releases may lack some of them.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celltune.data_prep.common import UserInputError, did_you_mean

logger = logging.getLogger(__name__)

TAG_SEG_MEAN = "celltune.seg_mean"
TAG_METRICS = "celltune.metrics"
TAG_ARCHITECTURE = "celltune.architecture"
TAG_TARGET_KIND = "celltune.target_kind"
TAG_POSTPROCESS = "celltune.postprocess"
TAG_NORMALIZATION = "celltune.normalization"
TAG_PARAMS = "celltune.params"
TAG_GMAC = "celltune.gmac_512"
TAG_CPU_SPEED = "celltune.cpu_frames_per_s"
TAG_KEY_SETTINGS = "celltune.key_settings"
TAG_SEARCH = "celltune.search"
TAG_TRIAL = "celltune.trial_id"
PROMOTED_PREFIX = "celltune.promoted."
PROMOTION_FIELDS = ("at", "by", "previous", "reason")
EVAL_PREFIX = "eval/"
_MISSING = "-"


def registry_client(tracking_uri: str):
    """An ``MlflowClient`` whose registry is the tracking store, after checking a SQLite store exists.

    Raises:
        UserInputError: a ``sqlite:///`` URI whose database file does not exist (MLflow would silently create
            an empty one, so a typo would read as "no registered models").
    """
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        database = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
        if database and database != ":memory:" and not Path(database).is_file():
            raise UserInputError(f"{tracking_uri}: no such tracking database (pass --tracking-uri or set "
                                 "MLFLOW_TRACKING_URI)")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _filter_name(name: str) -> str:
    quote = '"' if "'" in name else "'"
    return f"name = {quote}{name}{quote}"


def _all_pages(search, **kwargs) -> list:
    """Every page of an MLflow search (they return a PagedList with a continuation token)."""
    items, token = [], None
    while True:
        page = search(page_token=token, **kwargs)
        items.extend(page)
        token = page.token
        if not token:
            return items


def require_model(client, name: str):
    """The registered model ``name``.

    Raises:
        UserInputError: no such model; names a close match and the registered names.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in _all_pages(client.search_registered_models))
        hint = f"{suggestion} " if (suggestion := did_you_mean(name, known)) else ""
        raise UserInputError(f"no registered model named {name!r} ({hint}registered: "
                             f"{', '.join(known) or 'none'})") from None


def _float_tag(tags: Mapping[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _json_tag(tags: Mapping[str, str], key: str) -> dict[str, Any]:
    if key not in tags:
        return {}
    try:
        value = json.loads(tags[key])
    except json.JSONDecodeError:
        logger.warning("tag %s is not valid JSON; shown as missing", key)
        return {}
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class VersionView:
    """One registered version as ``celltune models`` shows it."""

    name: str
    version: int
    aliases: tuple[str, ...]
    created_ms: int
    run_id: str | None
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def created(self) -> str:
        return datetime.fromtimestamp(self.created_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    @property
    def seg_mean(self) -> float | None:
        """The validation ``seg_mean`` tag; None when absent or not a finite number."""
        return _float_tag(self.tags, TAG_SEG_MEAN)

    @property
    def metrics(self) -> dict[str, Any]:
        return _json_tag(self.tags, TAG_METRICS)

    @property
    def architecture(self) -> str | None:
        return self.tags.get(TAG_ARCHITECTURE)

    @property
    def params(self) -> float | None:
        return _float_tag(self.tags, TAG_PARAMS)

    @property
    def gmac(self) -> float | None:
        """Convolution GMac per 512x512 frame."""
        return _float_tag(self.tags, TAG_GMAC)

    @property
    def cpu_speed(self) -> float | None:
        """512x512 frames per second on the CPU of the machine that registered the version."""
        return _float_tag(self.tags, TAG_CPU_SPEED)

    @property
    def postprocess(self) -> dict[str, Any]:
        return _json_tag(self.tags, TAG_POSTPROCESS)

    @property
    def key_settings(self) -> dict[str, Any]:
        return _json_tag(self.tags, TAG_KEY_SETTINGS)

    @property
    def promotions(self) -> dict[str, dict[str, str]]:
        """``{alias: {"at", "by", "reason", "previous"}}`` from the ``celltune.promoted.<alias>.*`` tags."""
        out: dict[str, dict[str, str]] = {}
        for key, value in self.tags.items():
            if key.startswith(PROMOTED_PREFIX) and "." in key[len(PROMOTED_PREFIX):]:
                alias, what = key[len(PROMOTED_PREFIX):].rsplit(".", 1)
                out.setdefault(alias, {})[what] = value
        return dict(sorted(out.items()))


def _aliases_by_version(registered) -> dict[int, list[str]]:
    # search_model_versions leaves ModelVersion.aliases empty on some stores; the model's own map is reliable
    out: dict[int, list[str]] = {}
    for alias, version in sorted((registered.aliases or {}).items()):
        out.setdefault(int(version), []).append(alias)
    return out


def _view(version, aliases: dict[int, list[str]]) -> VersionView:
    number = int(version.version)
    return VersionView(name=version.name, version=number, aliases=tuple(aliases.get(number, ())),
                       created_ms=int(version.creation_timestamp or 0), run_id=version.run_id or None,
                       tags=dict(version.tags or {}))


def model_versions(client, name: str) -> list[VersionView]:
    """All versions of registered model ``name``, oldest first.

    Raises:
        UserInputError: no such model.
    """
    registered = require_model(client, name)
    aliases = _aliases_by_version(registered)
    found = _all_pages(client.search_model_versions, filter_string=_filter_name(name))
    return sorted((_view(v, aliases) for v in found), key=lambda view: view.version)


def version_view(client, name: str, version: str | int) -> VersionView:
    """One version of ``name`` (which must exist: resolve it first)."""
    registered = client.get_registered_model(name)
    return _view(client.get_model_version(name, str(version)), _aliases_by_version(registered))


@dataclass(frozen=True)
class ModelSummary:
    """A line of ``celltune models list``."""

    name: str
    versions: int
    latest: VersionView | None
    aliases: Mapping[str, int]


def list_models(client) -> list[ModelSummary]:
    """Every registered model with its version count, aliases and latest version, sorted by name."""
    by_model: dict[str, list] = {}
    for version in _all_pages(client.search_model_versions):
        by_model.setdefault(version.name, []).append(version)
    out = []
    for registered in sorted(_all_pages(client.search_registered_models), key=lambda m: m.name):
        versions = by_model.get(registered.name, [])
        latest = max(versions, key=lambda v: int(v.version), default=None)
        out.append(ModelSummary(
            name=registered.name, versions=len(versions),
            latest=None if latest is None else _view(latest, _aliases_by_version(registered)),
            aliases={alias: int(v) for alias, v in sorted((registered.aliases or {}).items())},
        ))
    return out


def eval_metrics(client, run_id: str | None) -> dict[tuple[str, str], dict[str, float]]:
    """``{(dataset, sequence): {MEASURE: value}}`` from the run's ``eval/<dataset>/<seq>/<MEASURE>`` metrics.

    A missing or deleted run gives an empty result (the version's tags are still worth showing).
    """
    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        metrics = client.get_run(run_id).data.metrics
    except MlflowException:
        logger.warning("run %s of this version is not in the tracking store; no evaluation metrics", run_id)
        return {}
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key[len(EVAL_PREFIX):].rsplit("/", 2) if key.startswith(EVAL_PREFIX) else []
        if len(parts) == 3 and all(parts):
            dataset, sequence, measure = parts
            out.setdefault((dataset, sequence), {})[measure] = float(value)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------------------------
# Text rendering
# ---------------------------------------------------------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width table: a header, a rule, one line per row; columns of numbers (or ``-``) right-aligned."""
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(header)]
    right = [bool(rows) and all(_is_number(row[i]) or row[i] == _MISSING for row in rows)
             for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))

    return "\n".join(line(cells).rstrip() for cells in [header, ["-" * w for w in widths], *rows])


def format_value(value: Any) -> str:
    """A cell: floats to 4 decimals, lists comma-joined, None as ``-``."""
    if value is None:
        return _MISSING
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value) or _MISSING
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _aliases_text(aliases: Iterable[str]) -> str:
    return ",".join(aliases) or _MISSING


def format_model_list(models: Sequence[ModelSummary]) -> str:
    """The ``celltune models list`` table."""
    rows = [[m.name, str(m.versions), _MISSING if m.latest is None else str(m.latest.version),
             format_value(None if m.latest is None else m.latest.seg_mean),
             ", ".join(f"{alias}->{version}" for alias, version in m.aliases.items()) or _MISSING]
            for m in models]
    return format_table(["model", "versions", "latest", "latest seg_mean", "aliases"], rows)


def _split_metrics(metrics: Mapping[str, Any]) -> tuple[list[str], list[str], dict[str, Any]]:
    """Measures with per-dataset values, the datasets, and the metrics that are neither per-dataset nor means."""
    measures = sorted({k.split("/", 1)[0] for k in metrics if "/" in k}, key=lambda m: (m != "seg", m))
    datasets = sorted({k.split("/", 1)[1] for k in metrics if "/" in k})
    means = {f"{m}_mean" for m in measures}
    other = {k: v for k, v in metrics.items() if "/" not in k and k not in means}
    return measures, datasets, other


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Per-dataset validation metrics (``celltune.metrics``): a row per dataset and a mean row."""
    measures, datasets, other = _split_metrics(metrics)
    rows = [[dataset] + [format_value(metrics.get(f"{m}/{dataset}")) for m in measures] for dataset in datasets]
    if any(f"{m}_mean" in metrics for m in measures):
        rows.append(["mean"] + [format_value(metrics.get(f"{m}_mean")) for m in measures])
    parts = [format_table(["dataset", *measures], rows)] if measures else []
    if other:
        parts.append(format_table(["metric", "value"], [[k, format_value(v)] for k, v in sorted(other.items())]))
    return "\n".join(parts)


def format_postprocess(postprocess: Mapping[str, Any]) -> str:
    """Post-processing thresholds: the default row and one row per dataset tuned by the search."""
    default = postprocess.get("default") or {}
    per_dataset = postprocess.get("per_dataset") or {}
    sets = [("default", default)] + sorted(per_dataset.items())
    keys = sorted({key for _, values in sets for key in values})
    return format_table(["dataset", *keys], [[where] + [format_value(values.get(k)) for k in keys]
                                             for where, values in sets])


def format_evaluation(evaluations: Mapping[tuple[str, str], Mapping[str, float]]) -> str:
    """``celltune evaluate --model`` scores logged to the version's run: a row per dataset and sequence."""
    from celltune.platform.evaluate import MEASURES

    found = {m for values in evaluations.values() for m in values}
    measures = [m for m in MEASURES if m in found] + sorted(found - set(MEASURES))
    rows = [[dataset, sequence] + [format_value(values.get(m)) for m in measures]
            for (dataset, sequence), values in evaluations.items()]
    return format_table(["dataset", "seq", *measures], rows)


def format_version(view: VersionView, evaluations: Mapping[tuple[str, str], Mapping[str, float]]) -> str:
    """Everything ``celltune models show`` knows about one version, as labelled sections."""
    search = view.tags.get(TAG_SEARCH)
    trial = view.tags.get(TAG_TRIAL)
    facts = [
        ("model", f"{view.name} version {view.version}"),
        ("aliases", _aliases_text(view.aliases)),
        ("created", view.created),
        ("run id", view.run_id or _MISSING),
        ("architecture", view.architecture or _MISSING),
        ("target kind", view.tags.get(TAG_TARGET_KIND, _MISSING)),
        ("normalization", view.tags.get(TAG_NORMALIZATION, _MISSING)),
        ("seg_mean", format_value(view.seg_mean)),
        ("cost", _cost_text(view)),
        ("search", _MISSING if not search else search + (f" (trial {trial})" if trial else "")),
    ]
    width = max(len(label) for label, _ in facts)
    sections = ["\n".join(f"{label:<{width}}  {value}" for label, value in facts)]
    metrics = view.metrics
    if metrics:
        sections.append("validation metrics\n" + format_metrics(metrics))
    if view.postprocess:
        sections.append("post-processing thresholds\n" + format_postprocess(view.postprocess))
    if view.key_settings:
        sections.append("key settings\n" + format_table(
            ["setting", "value"], [[k, format_value(v)] for k, v in view.key_settings.items()]))
    if view.promotions:
        sections.append("promotions\n" + format_table(
            ["alias", *PROMOTION_FIELDS],
            [[alias] + [values.get(f) or _MISSING for f in PROMOTION_FIELDS]
             for alias, values in view.promotions.items()]))
    if evaluations:
        sections.append("evaluation (logged to the run)\n" + format_evaluation(evaluations))
    return "\n\n".join(sections)


def format_compare(views: Sequence[VersionView]) -> str:
    """Versions side by side, one row each: aliases, architecture, seg_mean, SEG per dataset, key settings."""
    datasets = sorted({k.split("/", 1)[1] for view in views for k in view.metrics if k.startswith("seg/")})
    settings: list[str] = []
    for view in views:
        settings += [key for key in view.key_settings if key not in settings]
    header = ["version", "aliases", "architecture", "seg_mean", *(f"seg/{d}" for d in datasets), "params",
              "GMac/512px", "CPU frames/s", *settings]
    rows = []
    for view in views:
        metrics, chosen = view.metrics, view.key_settings
        rows.append([str(view.version), _aliases_text(view.aliases), view.architecture or _MISSING,
                     format_value(view.seg_mean), *(format_value(metrics.get(f"seg/{d}")) for d in datasets),
                     _millions(view.params), format_value(view.gmac), format_value(view.cpu_speed),
                     *(format_value(chosen.get(key)) for key in settings)])
    return format_table(header, rows)


def _millions(count: float | None) -> str:
    return _MISSING if count is None else f"{count / 1e6:.2f}M"


def _cost_text(view: VersionView) -> str:
    if view.params is None and view.gmac is None:
        return _MISSING
    text = f"{_millions(view.params)} parameters, {format_value(view.gmac)} GMac per 512x512 frame"
    return text if view.cpu_speed is None else f"{text}, {format_value(view.cpu_speed)} frames/s on CPU"
