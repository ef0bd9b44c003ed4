import pickle

import mlflow
import pytest

from celltune.platform.tracking import MASK, RunLogger, default_tracking_uri, flatten_params, secret_values


def test_per_dataset_keys_become_names_mlflow_accepts():
    flat = flatten_params({"data": {"scale": {"Fluo-N2DH-SIM+": 0.5, "DIC-C2DH-HeLa": 0.25}}}, secrets=set())
    assert flat == {"data.scale.Fluo-N2DH-SIMplus": "0.5", "data.scale.DIC-C2DH-HeLa": "0.25"}


def test_flatten_params_dots_nested_keys():
    flat = flatten_params({"model": {"name": "xbnet", "options": {"width": 16}}, "seed": 3, "empty": {}},
                          secrets=set())
    assert flat == {"model.name": "xbnet", "model.options.width": "16", "seed": "3", "empty": "{}"}


def test_params_never_carry_secret_environment_values():
    env = {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "MLFLOW_TRACKING_PASSWORD": "hunter22", "HOME": "/root"}
    secrets = secret_values(env)
    assert secrets == {"s3cr3t-value", "hunter22"}
    flat = flatten_params({"storage": "s3://u:s3cr3t-value@bucket/x", "home": "/root"}, secrets=secrets)
    assert "s3cr3t-value" not in flat["storage"] and MASK in flat["storage"]
    assert flat["home"] == "/root"


def test_default_tracking_uri_is_sqlite_in_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5000"


@pytest.fixture
def sqlite_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    return uri, run.info.run_id, client


def test_run_logger_survives_pickling_and_logs(sqlite_run):
    uri, run_id, client = sqlite_run
    run_logger = pickle.loads(pickle.dumps(RunLogger(uri, run_id)))
    run_logger.log_params({f"p{i}": str(i) for i in range(150)})
    run_logger.log_metrics({"loss": 0.5, "lr": 1e-4}, step=3)
    run_logger.log_dict({"a": 1}, "config.yaml")
    run = client.get_run(run_id)
    assert len(run.data.params) == 150
    assert run.data.metrics == {"loss": 0.5, "lr": 1e-4}
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [3]
    assert "config.yaml" in [a.path for a in client.list_artifacts(run_id)]


def test_metric_names_mlflow_rejects_are_made_acceptable(sqlite_run):
    from celltune.platform.tracking import metric_name

    assert metric_name("seg/Fluo-N2DH-SIM+") == "seg/Fluo-N2DH-SIMplus"
    assert metric_name("seg/DIC-C2DH-HeLa") == "seg/DIC-C2DH-HeLa"
    uri, run_id, client = sqlite_run
    RunLogger(uri, run_id).log_metrics({"seg/Fluo-N2DH-SIM+": 0.5, "iou/a(b)": 0.1}, step=1)
    assert client.get_run(run_id).data.metrics == {"seg/Fluo-N2DH-SIMplus": 0.5, "iou/a_b_": 0.1}


def test_relative_tracking_uris_become_absolute(tmp_path, monkeypatch):
    from celltune.platform.tracking import absolute_tracking_uri

    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert absolute_tracking_uri("sqlite:////data/m.db") == "sqlite:////data/m.db"
    assert absolute_tracking_uri("mlruns") == (tmp_path / "mlruns").as_uri()
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_a_sqlite_store_keeps_its_artifacts_beside_the_database(tmp_path, monkeypatch):
    from celltune.platform.tracking import experiment_id

    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    uri = f"sqlite:///{tmp_path}/work/mlflow.db"
    (tmp_path / "work").mkdir()
    client = mlflow.MlflowClient(uri)
    made = experiment_id(client, "celltune-train", uri)
    assert experiment_id(client, "celltune-train", uri) == made  # found, not made twice
    location = client.get_experiment(made).artifact_location
    assert location == (tmp_path / "work" / "mlruns" / "celltune-train").as_uri()
    run = client.create_run(made)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert (tmp_path / "work" / "mlruns" / "celltune-train").is_dir() and not (elsewhere / "mlruns").exists()
