"""The shared MLflow server as deploy/mlflow runs it: basic auth on, Host headers and CORS origins restricted.

One real ``mlflow server --app-name basic-auth`` on 127.0.0.1 (free port, SQLite backend and auth database in a
tmp folder), its admin password in a generated auth config file named by ``MLFLOW_AUTH_CONFIG_PATH`` and the
Flask secret key in the environment, as the compose file and the Kubernetes Deployment pass them. Checked over
plain HTTP: no credentials -> 401, the admin's -> 200, a wrong password -> 401, a Host header outside
``--allowed-hosts`` -> 403 even with credentials, a cross-origin write from an origin outside
``--cors-allowed-origins`` -> 403; and through ``MlflowClient`` with ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD``, what a celltune client does: create an experiment, a run, log a metric.
The auth app needs Flask-WTF (``mlflow[auth]``, the ``server`` extra); without it the test skips, or fails
under ``CI=true``.
"""

from __future__ import annotations

import base64
import configparser
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from process_groups import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_DIR = ROOT / "deploy" / "mlflow"
AUTH_INI_EXAMPLE = MLFLOW_DIR / "basic_auth.ini.example"
COMPOSE = MLFLOW_DIR / "docker-compose.yaml"
SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
ADMIN = "admin"


def _request(url: str, *, auth: tuple[str, str] | None = None, headers: dict[str, str] | None = None,
             method: str = "GET", body: dict | None = None) -> tuple[int, str]:
    """Status and body of one request; HTTP errors are answers here, not exceptions."""
    headers = dict(headers or {})
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _wait_healthy(uri: str, server: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if _request(f"{uri}/health")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"mlflow server not healthy within {timeout} s:\n{log.read_text()[-3000:]}")


def _require_auth_extra() -> None:
    if importlib.util.find_spec("flask_wtf") is None:
        message = "MLflow's basic-auth app needs Flask-WTF: pip install -e '.[server]' (mlflow[auth])"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def _write_auth_config(example: Path, target: Path, database_uri: str, password: str) -> None:
    """The committed example with its placeholders filled in, as an operator makes the real file."""
    config = configparser.ConfigParser()
    config.read_string(example.read_text())
    section = config["mlflow"]
    assert section["admin_password"].startswith("<"), "the example must hold a placeholder, not a password"
    section["database_uri"] = database_uri
    section["admin_password"] = password
    with target.open("w") as handle:
        config.write(handle)
    target.chmod(0o600)


@dataclass(frozen=True)
class AuthServer:
    uri: str
    port: int
    password: str


SERVER = pytest.mark.slow  # the server's start alone takes ~10 s; the whole file ~25 s


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> AuthServer:
    _require_auth_extra()
    root = tmp_path_factory.mktemp("mlflow-auth")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    password = secrets.token_urlsafe(18)
    auth_ini = root / "basic_auth.ini"
    _write_auth_config(AUTH_INI_EXAMPLE, auth_ini, f"sqlite:///{root}/auth.db", password)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "RAY_ADDRESS")) and key != "_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"}
    env.update(QUIET, MLFLOW_AUTH_CONFIG_PATH=str(auth_ini), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--app-name", "basic-auth",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "art"),
               "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
               "--cors-allowed-origins", f"http://127.0.0.1:{port},http://localhost:{port}"]
    log = root / "server.log"
    server = None
    try:
        with log.open("w") as handle:
            server = subprocess.Popen(command, env=env, cwd=root, stdout=handle, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        _wait_healthy(uri, server, log)
        yield AuthServer(uri, port, password)
    finally:
        if server is not None:
            stop_process_group(server)


def test_recipe_defaults_new_users_to_read_only():
    config = configparser.ConfigParser()
    config.read_string(AUTH_INI_EXAMPLE.read_text())
    assert config["mlflow"]["default_permission"] in {"READ", "NO_PERMISSIONS"}
    assert config["mlflow"]["admin_username"] == ADMIN
    assert "basic_auth.ini" in (MLFLOW_DIR / ".gitignore").read_text().split(), "the filled-in file must be ignored"


def test_compose_runs_basic_auth_with_its_config_from_a_secret_file():
    service = yaml.safe_load(COMPOSE.read_text())
    mlflow = service["services"]["mlflow"]
    assert mlflow["command"][:3] == ["mlflow", "server", "--app-name=basic-auth"]
    (secret,) = mlflow["secrets"]
    assert service["secrets"][secret]["file"] == "./basic_auth.ini"
    assert mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == f"/run/secrets/{secret}"
    assert mlflow["environment"]["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${MLFLOW_FLASK_SERVER_SECRET_KEY")
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in mlflow["environment"]


def test_kubernetes_runs_basic_auth_with_its_config_from_the_secret():
    deployment = yaml.safe_load((MLFLOW_DIR / "k8s" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "--app-name=basic-auth" in container["args"]
    env = {item["name"]: item for item in container["env"]}
    config_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-secrets"
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "mlflow-secrets"
    assert {"key": "auth-config", "path": config_path.name} in volume["secret"]["items"]
    # Secret files are root-owned: the non-root server reads them through the pod's fsGroup.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    assert volume["secret"]["defaultMode"] & 0o040


@SERVER
def test_unauthenticated_request_is_refused_and_the_admin_is_let_in(auth_server):
    status, _ = _request(auth_server.uri + SEARCH)
    assert status == 401
    status, _ = _request(auth_server.uri + SEARCH, auth=(ADMIN, auth_server.password + "x"))
    assert status == 401
    status, body = _request(auth_server.uri + SEARCH, auth=(ADMIN, auth_server.password))
    assert status == 200, body
    assert "experiments" in json.loads(body)
    # The probes of the recipes stay open: /health needs no credentials.
    assert _request(auth_server.uri + "/health")[0] == 200


@SERVER
def test_host_header_outside_allowed_hosts_is_refused(auth_server):
    creds = (ADMIN, auth_server.password)
    status, _ = _request(auth_server.uri + SEARCH, auth=creds, headers={"Host": f"localhost:{auth_server.port}"})
    assert status == 200
    foreign = {"Host": f"attacker.example:{auth_server.port}"}
    status, body = _request(auth_server.uri + SEARCH, auth=creds, headers=foreign)
    assert status == 403, body
    assert _request(auth_server.uri + SEARCH, headers=foreign)[0] == 403  # refused before any login


@SERVER
def test_cross_origin_write_from_an_unlisted_origin_is_refused(auth_server):
    creds = (ADMIN, auth_server.password)
    url = auth_server.uri + "/api/2.0/mlflow/experiments/create"
    status, body = _request(url, auth=creds, method="POST", body={"name": "cors-evil"},
                            headers={"Origin": "http://attacker.example"})
    assert status == 403, body
    status, body = _request(url, auth=creds, method="POST", body={"name": "cors-ok"},
                            headers={"Origin": auth_server.uri})
    assert status == 200, body


@SERVER
def test_mlflow_client_with_tracking_credentials_logs(auth_server, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
        MlflowClient(auth_server.uri).search_experiments(max_results=1)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    client = MlflowClient(auth_server.uri)
    experiment_id = client.create_experiment("celltune-auth-check")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "seg_mean", 0.5, step=1)
    client.set_terminated(run.info.run_id)
    assert client.get_metric_history(run.info.run_id, "seg_mean")[0].value == 0.5


@SERVER
def test_new_user_reads_by_default_and_writes_once_granted(auth_server, monkeypatch):
    """The README's account recipe: the admin creates a user, who may read but not log until granted EDIT."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient  # what get_app_client("basic-auth", ...) returns

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    experiment_id = MlflowClient(auth_server.uri).create_experiment("celltune-shared")
    user, user_password = "alice", secrets.token_urlsafe(16)
    admin = AuthServiceClient(auth_server.uri)
    admin.create_user(user, user_password)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user_password)
    client = MlflowClient(auth_server.uri)
    assert client.get_experiment(experiment_id).name == "celltune-shared"
    with pytest.raises(MlflowException, match="PERMISSION_DENIED|403|Permission denied"):
        client.create_run(experiment_id)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    admin.grant_user_permission(user, "experiment", experiment_id, "EDIT")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user_password)
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "seg_mean", 0.25)
