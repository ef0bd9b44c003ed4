"""`celltune models list|show|compare|promote` against a real SQLite MLflow registry built here by hand.

The registry holds model ``cells`` with four versions (tags as ``celltune search`` writes them, except version 4
which has no ``celltune.seg_mean``, like a hand-registered model), model ``other`` with one version and model
``empty`` with none. It is built once per module and copied for every test, so promotions do not leak.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from celltune.platform.cli import main
from celltune.platform.model_promotion import _user, promote
from celltune.platform.model_registry_views import VersionView, format_table

HELA, SIM = "DIC-C2DH-HeLa", "Fluo-N2DH-SIMplus"
SETTINGS = {"crop": 256, "datasets": ["DIC-C2DH-HeLa", "Fluo-N2DH-SIM+"], "epochs": 30, "loss": "ce",
            "lr": 0.0001, "scheduler": "cosine", "scheme": "acc"}
# version -> (seg_mean, seg per dataset, architecture, crop[, cost]); version 4 has no seg_mean tag
VERSIONS = {1: (0.812, (0.7, 0.924), "xbnet", 256, (11375683, 98.5)), 2: (0.774, (0.65, 0.898), "unet", 512),
            3: (0.83, (0.74, 0.92), "xbnet", 384), 4: (None, (0.5, 0.6), "xbnet", 256)}


def _tags(seg_mean, seg, architecture, crop, cost=None) -> dict[str, str]:
    metrics = {f"seg/{HELA}": seg[0], f"seg/{SIM}": seg[1], f"iou/{HELA}": seg[0] - 0.05,
               f"iou/{SIM}": seg[1] - 0.05, "iou_mean": round((seg[0] + seg[1]) / 2 - 0.05, 4), "step": 120.0}
    tags = {
        "celltune.metrics": json.dumps(metrics | ({"seg_mean": seg_mean} if seg_mean is not None else {})),
        "celltune.architecture": architecture,
        "celltune.target_kind": "tertiary",
        "celltune.normalization": "minmax",
        "celltune.postprocess": json.dumps({"default": {"hole_area": 100, "min_area": 500},
                                            "per_dataset": {"DIC-C2DH-HeLa": {"hole_area": 50, "min_area": 800}}}),
        "celltune.key_settings": json.dumps(SETTINGS | {"crop": crop}),
        "celltune.search": "demo-search",
        "celltune.trial_id": "trial_0001",
    }
    if seg_mean is not None:
        tags["celltune.seg_mean"] = str(seg_mean)
    if cost is not None:  # parameters, GMac per 512x512 frame and CPU frames/s, as registration records them
        tags["celltune.params"], tags["celltune.gmac_512"] = str(cost[0]), str(cost[1])
        tags["celltune.cpu_frames_per_s"] = "2.5"
    return tags


def _register(client, experiment_id: str, name: str, tags: dict[str, str], metrics: dict[str, float] | None = None):
    run = client.create_run(experiment_id)
    run_id = run.info.run_id
    client.log_text(run_id, "{}", "model/celltune/celltune_model.json")
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id)
    return client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id, tags=tags)


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("search", artifact_location=str(root / "artifacts"))
    client.create_registered_model("cells")
    evaluation = {f"eval/{HELA}/01/SEG": 0.71, f"eval/{HELA}/01/DET": 0.9, f"eval/{HELA}/01/TRA": 0.88,
                  f"eval/{SIM}/02/SEG": 0.93, "seg_mean": 0.812}
    for number, spec in VERSIONS.items():
        version = _register(client, experiment, "cells", _tags(*spec), evaluation if number == 1 else None)
        assert int(version.version) == number
    client.set_registered_model_alias("cells", "champion", "1")
    client.set_registered_model_alias("cells", "candidate", "2")
    client.create_registered_model("other")
    _register(client, experiment, "other", _tags(0.5, (0.4, 0.6), "u_se_resnet", 256))
    client.create_registered_model("empty")
    return root


@pytest.fixture()
def store(template_store, tmp_path, monkeypatch) -> str:
    """A private copy of the template registry; returns its tracking URI."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for path in template_store.glob("mlflow.db*"):
        shutil.copyfile(path, tmp_path / path.name)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("celltune:")]
    assert len(lines) == 1, err
    return lines[0]


def _rows(table: str) -> dict[str, list[str]]:
    """Table lines after the rule, keyed by their first cell."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"}) + 1
    return {line.split()[0]: line.split() for line in lines[start:] if line.strip()}


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_list_shows_versions_aliases_and_latest_seg_mean(store, capsys):
    code, out, _ = _run(capsys, "list", "--tracking-uri", store)
    assert code == 0
    assert out.splitlines()[0].split() == ["model", "versions", "latest", "latest", "seg_mean", "aliases"]
    rows = _rows(out)
    assert rows["cells"] == ["cells", "4", "4", "-", "candidate->2,", "champion->1"]  # version 4 has no seg_mean
    assert rows["other"] == ["other", "1", "1", "0.5000", "-"]
    assert rows["empty"] == ["empty", "0", "-", "-", "-"]
    assert list(rows) == ["cells", "empty", "other"]


def test_show_alias_has_metrics_thresholds_settings_and_evaluation(store, capsys):
    code, out, _ = _run(capsys, "show", "cells@champion", "--tracking-uri", store)
    assert code == 0
    assert "cells version 1" in out and "version 2" not in out
    facts = dict(line.split(None, 1) for line in out.split("\n\n")[0].splitlines() if len(line.split()) > 1)
    assert facts["aliases"] == "champion"
    assert facts["architecture"] == "xbnet"
    assert facts["seg_mean"] == "0.8120"
    assert facts["search"] == "demo-search (trial trial_0001)"
    sections = {block.splitlines()[0]: "\n".join(block.splitlines()[1:]) for block in out.strip().split("\n\n")[1:]}
    metrics = _rows(sections["validation metrics"].split("\nmetric")[0])
    assert metrics[HELA] == [HELA, "0.7000", "0.6500"]  # seg first, then iou
    assert metrics[SIM] == [SIM, "0.9240", "0.8740"]
    assert metrics["mean"] == ["mean", "0.8120", "0.7620"]
    assert "step" in sections["validation metrics"] and "120.0000" in sections["validation metrics"]
    thresholds = _rows(sections["post-processing thresholds"])
    assert thresholds["default"] == ["default", "100", "500"]
    assert thresholds[HELA] == [HELA, "50", "800"]
    settings = _rows(sections["key settings"])
    assert settings["crop"][1] == "256" and settings["lr"][1] == "0.0001"
    assert settings["datasets"][1] == "DIC-C2DH-HeLa,Fluo-N2DH-SIM+"
    evaluation = sections["evaluation (logged to the run)"]
    assert evaluation.splitlines()[0].split() == ["dataset", "seq", "SEG", "DET", "TRA"]
    assert _rows(evaluation)[HELA] == [HELA, "01", "0.7100", "0.9000", "0.8800"]
    assert _rows(evaluation)[SIM] == [SIM, "02", "0.9300", "-", "-"]
    assert "promotions" not in sections


def test_show_version_and_all_versions(store, capsys):
    code, out, _ = _run(capsys, "show", "cells/2", "--tracking-uri", store)
    assert code == 0
    assert "cells version 2" in out and "unet" in out and "evaluation" not in out
    assert _run(capsys, "show", "models:/cells/2", "--tracking-uri", store)[1] == out
    code, out, _ = _run(capsys, "show", "cells", "--tracking-uri", store)
    assert code == 0
    assert [f"cells version {n}" in out for n in (1, 2, 3, 4)] == [True] * 4
    assert out.index("cells version 1") < out.index("cells version 4")
    code, out, _ = _run(capsys, "show", "empty", "--tracking-uri", store)
    assert code == 0 and out.strip() == "empty: no versions registered"


def test_compare_puts_versions_side_by_side(store, capsys):
    code, out, _ = _run(capsys, "compare", "cells", "--tracking-uri", store)
    assert code == 0
    assert out.splitlines()[0].split() == ["version", "aliases", "architecture", "seg_mean", f"seg/{HELA}",
                                           f"seg/{SIM}", "params", "GMac/512px", "CPU", "frames/s", "crop",
                                           "datasets", "epochs", "loss", "lr", "scheduler", "scheme"]
    rows = _rows(out)
    assert rows["1"][:10] == ["1", "champion", "xbnet", "0.8120", "0.7000", "0.9240", "11.38M", "98.5000", "2.5000",
                              "256"]
    assert rows["2"][:10] == ["2", "candidate", "unet", "0.7740", "0.6500", "0.8980", "-", "-", "-", "512"]
    assert rows["3"][:10] == ["3", "-", "xbnet", "0.8300", "0.7400", "0.9200", "-", "-", "-", "384"]
    assert rows["4"][:4] == ["4", "-", "xbnet", "-"]
    assert rows["1"][10:] == ["DIC-C2DH-HeLa,Fluo-N2DH-SIM+", "30", "ce", "0.0001", "cosine", "acc"]


def test_promote_moves_alias_and_records_who_when_why(store, capsys):
    before = datetime.now(UTC).replace(microsecond=0)
    code, out, _ = _run(capsys, "promote", "cells", "3", "--reason", "better on HeLa", "--tracking-uri", store)
    assert code == 0
    assert out.strip() == "moved champion of cells from version 1 (seg_mean 0.812) to version 3 (seg_mean 0.83)"
    client = _client(store)
    assert client.get_registered_model("cells").aliases == {"champion": 3, "candidate": 2}
    tags = client.get_model_version("cells", "3").tags
    assert tags["celltune.promoted.champion.by"] == _user()
    assert tags["celltune.promoted.champion.reason"] == "better on HeLa"
    assert tags["celltune.promoted.champion.previous"] == "1"
    at = datetime.fromisoformat(tags["celltune.promoted.champion.at"])
    assert at.utcoffset() == timedelta(0) and before <= at <= datetime.now(UTC)
    assert not any(k.startswith("celltune.promoted") for k in client.get_model_version("cells", "1").tags)
    code, out, _ = _run(capsys, "show", "cells@champion", "--tracking-uri", store)
    promotions = _rows(out.split("promotions\n")[1].split("\n\n")[0])
    assert promotions["champion"][1:3] == [tags["celltune.promoted.champion.at"], _user()]
    assert promotions["champion"][3:] == ["1", "better", "on", "HeLa"]


def test_promote_refuses_a_worse_version_with_both_numbers(store, capsys):
    code, out, err = _run(capsys, "promote", "cells", "2", "--tracking-uri", store)
    assert code == 2 and out == ""
    assert _error(err) == ("celltune: error: refusing to move champion from version 1 (seg_mean 0.812) to version 2 "
                           "(seg_mean 0.774); pass --force to promote anyway")
    client = _client(store)
    assert client.get_registered_model("cells").aliases["champion"] == 1
    assert not any(k.startswith("celltune.promoted") for k in client.get_model_version("cells", "2").tags)


def test_force_overrides_the_guard(store, capsys):
    code, out, _ = _run(capsys, "promote", "cells", "2", "--force", "--tracking-uri", store)
    assert code == 0 and out.strip().endswith("(forced)")
    client = _client(store)
    assert client.get_registered_model("cells").aliases["champion"] == 2
    tags = client.get_model_version("cells", "2").tags
    assert tags["celltune.promoted.champion.previous"] == "1"
    assert tags["celltune.promoted.champion.reason"] == ""


def test_promote_to_current_holder_is_a_no_op(store, capsys):
    code, out, _ = _run(capsys, "promote", "cells", "1", "--tracking-uri", store)
    assert code == 0 and out.strip() == "champion of cells already points to version 1; nothing changed"
    assert not any(k.startswith("celltune.promoted") for k in _client(store).get_model_version("cells", "1").tags)


def test_promote_new_alias_and_version_without_seg_mean(store, capsys):
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = promote("other", "1", alias="staging", reason="first", tracking_uri=store, user="ana", now=when)
    assert result.moved and result.previous is None
    assert result.message == "staging of other now points to version 1 (seg_mean 0.5)"
    tags = _client(store).get_model_version("other", "1").tags
    assert {k: v for k, v in tags.items() if k.startswith("celltune.promoted")} == {
        "celltune.promoted.staging.by": "ana", "celltune.promoted.staging.at": "2026-01-02T03:04:05+00:00",
        "celltune.promoted.staging.reason": "first", "celltune.promoted.staging.previous": ""}
    code, _, err = _run(capsys, "promote", "cells", "4", "--tracking-uri", store)
    assert code == 2
    assert _error(err) == ("celltune: error: cells version 4 has no celltune.seg_mean tag to compare; pass --force "
                           "to promote it to champion anyway")
    code, out, _ = _run(capsys, "promote", "cells", "4", "--force", "--tracking-uri", store)
    assert code == 0 and "(seg_mean none) (forced)" in out
    assert _client(store).get_registered_model("cells").aliases["champion"] == 4


@pytest.mark.parametrize(("argv", "message"), [
    (["promote", "cell", "1"], "no registered model named 'cell' (did you mean 'cells'? registered: cells, empty, "
                               "other)"),
    (["promote", "cells", "9"], "models:/cells/9: model 'cells' has no version 9"),
    (["promote", "cells", "two"], "version 'two': must be a version number such as 3"),
    (["promote", "cells", "3", "--alias", "v3"], "--alias 'v3': Version alias name 'v3' is reserved."),
    (["show", "cells@gold"], "models:/cells@gold: model 'cells' has no alias 'gold'"),
    (["show", "cells/7"], "models:/cells/7: model 'cells' has no version 7"),
    (["show", "nope@champion"], "no registered model named 'nope' (registered: cells, empty, other)"),
    (["show", "nope"], "no registered model named 'nope' (registered: cells, empty, other)"),
    (["compare", "zzz"], "no registered model named 'zzz' (registered: cells, empty, other)"),
])
def test_unknown_names_are_one_line_errors(store, capsys, argv, message):
    code, out, err = _run(capsys, *argv, "--tracking-uri", store)
    assert code == 2 and out == ""
    assert _error(err) == f"celltune: error: {message}"
    assert _client(store).get_registered_model("cells").aliases == {"champion": 1, "candidate": 2}


def test_missing_tracking_database_is_an_error_not_an_empty_registry(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'typo.db'}"
    code, _, err = _run(capsys, "list", "--tracking-uri", uri)
    assert code == 2
    assert _error(err) == f"celltune: error: {uri}: no such tracking database (pass --tracking-uri or set " \
                          "MLFLOW_TRACKING_URI)"
    assert not (tmp_path / "typo.db").exists()


def test_default_tracking_uri_is_the_working_directory(store, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the store fixture copied mlflow.db here
    code, out, _ = _run(capsys, "list")
    assert code == 0 and "cells" in out


def test_bad_tags_show_as_missing_and_tables_align():
    view = VersionView(name="m", version=1, aliases=(), created_ms=0, run_id=None,
                       tags={"celltune.seg_mean": "nan", "celltune.metrics": "{not json",
                             "celltune.key_settings": "[1]"})
    assert (view.seg_mean, view.metrics, view.key_settings, view.created) == (None, {}, {}, "1970-01-01 00:00:00 UTC")
    table = format_table(["name", "score"], [["a", "0.5"], ["long-name", "-"], ["b", "12.25"]])
    assert table.splitlines() == ["name       score", "---------  -----", "a            0.5", "long-name      -",
                                  "b          12.25"]
