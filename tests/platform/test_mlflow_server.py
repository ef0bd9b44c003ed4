"""A search against a real `mlflow server` over HTTP: runs, proxied artifacts, registration, promotion, the UI.

One search (two demo trials of two epochs) logs to a server started on 127.0.0.1 with a SQLite backend and a
local artifact destination; the model is then promoted with `celltune models promote`. The search runs with an
environment variable whose name looks like a credential, and its value is part of the store and storage paths,
so the same search also shows that no logged param carries it.

The UI is checked in headless Chromium (Debian's ``chromium`` package) driven over the DevTools protocol on a
pipe (``--remote-debugging-pipe``, no extra Python packages), through the pages a user opens and what they show
(visible text and ARIA table rows), never the UI's private browser state: the search's parent run page with its
child runs, each trial's run page with its ``seg_mean``, and the registered model's page with its aliases.
Screenshots go to ``$CELLTUNE_TEST_ARTIFACTS`` (default: the test's tmp folder).
With ``CI=true`` a missing Chromium fails the test instead of skipping it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
import select
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from process_groups import free_port, stop_process_group

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SECRET_NAME = "CELLTUNE_TEST_API_TOKEN"
SEARCH = "served"
MODEL = "served-model"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,900"]
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "RAY_USAGE_STATS_ENABLED": "0"}


def _wait_healthy(uri: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy within {timeout} s:\n{log.read_text()[-3000:]}")


def _celltune(*args: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "celltune.platform", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@dataclass(frozen=True)
class ServedSearch:
    uri: str
    root: Path
    artifacts: Path  # the server's --artifacts-destination
    secret: str
    search: subprocess.CompletedProcess
    promote: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def served_search(tmp_path_factory, demo_stores) -> ServedSearch:
    """A tracking server on 127.0.0.1, a search logged to it over HTTP (with a secret in its environment and
    paths), and the promotion of the registered model to ``champion``."""
    root = tmp_path_factory.mktemp("served")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(QUIET)
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root}/m.db", "--artifacts-destination", str(root / "artifacts"),
               "--workers", "1", "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
               "--cors-allowed-origins", uri]
    with log.open("w") as handle:
        server = subprocess.Popen(command, env=env, cwd=root, stdout=handle, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _wait_healthy(uri, server, log)
        secret = "tok" + secrets.token_hex(12)
        secret_dir = root / secret
        shutil.copytree(demo_stores, secret_dir / "stores")
        search = _celltune("search", "--space", "demo", "--stores", str(secret_dir / "stores"), "--trials", "2",
                           "--set", "training.epochs=2", "--tracking-uri", uri, "--storage",
                           str(secret_dir / "searches"), "--name", SEARCH, "--register-as", MODEL,
                           env={**env, SECRET_NAME: secret}, cwd=root)
        promote = _celltune("models", "promote", MODEL, "1", "--alias", "champion", "--reason", "served test",
                            "--tracking-uri", uri, env=env, cwd=root, timeout=120)
        yield ServedSearch(uri, root, root / "artifacts", secret, search, promote)
    finally:
        stop_process_group(server)


def _runs(served: ServedSearch):
    client = MlflowClient(served.uri)
    experiment = client.get_experiment_by_name("celltune-search")
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`celltune.kind` = 'search'")
    children = client.search_runs([experiment.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    return client, experiment, parent, children


def test_search_logs_registers_and_promotes_through_the_server(served_search):
    search = served_search.search
    assert search.returncode == 0, search.stderr[-5000:]
    assert f"registered models:/{MODEL}/1" in search.stdout
    assert f"in {served_search.uri}" in search.stdout  # "MLflow parent run <id> in <uri>"

    client, experiment, parent, children = _runs(served_search)
    assert parent.info.status == "FINISHED" and len(children) == 2
    evaluations = sorted(len(client.get_metric_history(c.info.run_id, "seg_mean")) for c in children)
    assert evaluations[0] >= 1 and evaluations[-1] == 2  # ASHA may stop the second trial after one epoch

    # Artifacts went through the server's proxy into its destination, not to a path on the client.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    listed = {a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    assert "search/trials.txt" in listed
    stored = served_search.artifacts / experiment.experiment_id / parent.info.run_id / "artifacts" / "search"
    assert (stored / "trials.txt").is_file()

    promote = served_search.promote
    assert promote.returncode == 0, promote.stderr[-3000:]
    assert f"champion of {MODEL} now points to version 1" in promote.stdout
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" == client.get_model_version_by_alias(MODEL, "candidate").version
    assert champion.run_id in {c.info.run_id for c in children}
    assert champion.tags["celltune.promoted.champion.reason"] == "served test"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "headless Chromium not found (Debian: apt-get install -y chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


class DevTools:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out; NUL-separated JSON)."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def use_fds_3_and_4() -> None:  # move above 4 first: os.pipe may have handed out 3 or 4 itself
            read_end = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.log = (profile.parent / "chromium.log").open("w")
        self.process = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-pipe", "about:blank"],
                                        preexec_fn=use_fds_3_and_4, close_fds=False, start_new_session=True,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.session: str | None = None

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_chrome], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise EOFError(f"Chromium exited with {self.process.poll()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Poll a JS expression until it is truthy; returns its last value either way."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        for fd in (self._to_chrome, self._from_chrome):
            os.close(fd)
        stop_process_group(self.process)
        self.log.close()


def _artifact_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CELLTUNE_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# What a user reads on a page, through its public surface only: the visible text, and the rows of its ARIA tables
# (the run page's metrics table is a role="table" of role="row"s with role="cell"s). No UI-private state.
_PAGE = """(() => {
  const tables = [...document.querySelectorAll('[role="table"]')].map(table =>
    [...table.querySelectorAll('[role="row"]')].map(row =>
      [...row.querySelectorAll('[role="cell"], [role="gridcell"], [role="columnheader"]')]
        .map(cell => cell.innerText.trim())));
  return {text: document.body.innerText, tables};
})()"""


@dataclass(frozen=True)
class Page:
    url: str
    text: str
    tables: list[list[list[str]]]
    screenshot: Path

    def metric(self, name: str) -> str | None:
        """The value shown beside ``name`` in a Metric/Value table, else on the line after it in the text."""
        for table in self.tables:
            for row in table:
                if len(row) >= 2 and row[0] == name:
                    return row[1]
        lines = [line.strip() for line in self.text.splitlines()]
        return next((lines[i + 1] for i, line in enumerate(lines[:-1]) if line == name), None)

    def missing(self, what: str) -> str:
        shown = " | ".join(line for line in self.text.splitlines() if line.strip())[:1500]
        return f"{self.url}: {what} not shown (screenshot {self.screenshot}); the page showed: {shown}"


def _visit(browser: DevTools, url: str, ready: list[str], shot: Path, timeout: float = 60,
           show: str | None = None) -> Page:
    """Open ``url`` as a user would and wait until every string of ``ready`` is on the page (or time runs out);
    the screenshot shows the table row that starts with ``show`` where there is one."""
    browser.call("Page.navigate", url=url)
    browser.wait_for(f"{json.dumps(ready)}.every(s => document.body && document.body.innerText.includes(s))",
                     timeout=timeout)
    if show:
        browser.evaluate(f"""[...document.querySelectorAll('[role="table"] [role="row"]')]
            .find(r => r.innerText.trim().startsWith({json.dumps(show)}))?.scrollIntoView({{block: 'center'}})""")
    state = browser.evaluate(_PAGE)
    page = Page(url, state["text"], state["tables"], browser.screenshot(shot))
    print(f"MLflow UI screenshot: {page.screenshot}")
    return page


def test_mlflow_ui_shows_the_search_runs_seg_mean_and_champion(served_search, tmp_path):
    """The pages a user opens: the search's parent run (with its trials as child runs), each trial's run page
    (its seg_mean in the metrics table) and the registered model's page (aliases champion and candidate)."""
    chromium = _chromium()
    assert served_search.search.returncode == 0, served_search.search.stderr[-3000:]
    client, experiment, parent, children = _runs(served_search)
    artifacts = _artifact_dir(tmp_path)
    runs_url = f"{served_search.uri}/#/experiments/{experiment.experiment_id}/runs"

    browser = DevTools(chromium, tmp_path / "chromium-profile")
    try:
        browser.open("about:blank")
        names = [child.info.run_name for child in children]
        page = _visit(browser, f"{runs_url}/{parent.info.run_id}", [SEARCH, *names],
                      artifacts / "mlflow-search-parent-run.png")
        assert SEARCH in page.text, page.missing(f"the search's parent run {SEARCH!r}")
        for name in names:
            assert name in page.text, page.missing(f"child run {name!r} of the search")

        for index, child in enumerate(sorted(children, key=lambda run: run.info.run_name)):
            value = child.data.metrics["seg_mean"]
            page = _visit(browser, f"{runs_url}/{child.info.run_id}", [child.info.run_name, "seg_mean"],
                          artifacts / f"mlflow-trial-run-{index}.png", show="seg_mean")
            assert child.info.run_name in page.text, page.missing(f"trial run name {child.info.run_name!r}")
            shown = page.metric("seg_mean")
            assert shown is not None, page.missing("the trial's seg_mean metric")
            assert _number(shown) == pytest.approx(value, abs=5e-4), \
                page.missing(f"seg_mean {value} (the page shows {shown!r})")

        page = _visit(browser, f"{served_search.uri}/#/models/{MODEL}", [MODEL, "champion", "candidate"],
                      artifacts / "mlflow-registered-model.png")
        for alias in ("champion", "candidate"):
            assert alias in page.text, page.missing(f"alias {alias!r} of {MODEL}")
    finally:
        browser.close()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def test_no_logged_param_or_tag_carries_a_secret_from_the_environment(served_search):
    assert served_search.search.returncode == 0, served_search.search.stderr[-3000:]
    secret = served_search.secret
    client, experiment, parent, children = _runs(served_search)
    assert len(children) == 2
    for run in [parent, *children]:
        leaking = {k: v for k, v in {**run.data.params, **run.data.tags}.items() if secret in v}
        assert not leaking, f"run {run.info.run_name} logs the value of ${SECRET_NAME}: {leaking}"
    # The value was in the config (store and storage paths) and was masked there, not merely absent.
    assert "/***/searches/" in parent.data.params["search.storage"]
    assert all("/***/stores/" in child.data.params["data.stores"] for child in children)

    version = client.get_model_version(MODEL, "1")
    assert not {k: v for k, v in version.tags.items() if secret in v}
    (model,) = client.search_logged_models([experiment.experiment_id])  # the registered version's LoggedModel
    assert version.source == model.artifact_location
    assert not {k: v for k, v in {**model.params, **model.tags}.items() if secret in v}
    assert "/***/stores/" in model.params["data.stores"]


def test_no_logged_artifact_carries_a_secret_from_the_environment(served_search):
    assert served_search.search.returncode == 0, served_search.search.stderr[-3000:]
    needle = served_search.secret.encode()
    leaking = sorted(str(path.relative_to(served_search.artifacts)) for path in served_search.artifacts.rglob("*")
                     if path.is_file() and needle in path.read_bytes())
    assert not leaking, f"artifacts holding the value of ${SECRET_NAME}: {leaking}"
