"""Writes to a busy tracking store are tried again (issue 18): SQLite refuses a second writer at once in some
cases ("database is locked"), and a trial must not fail on it; other errors still fail at once."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from celltune.platform import tracking


class FlakyCall:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "written"


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)


def test_a_locked_store_is_tried_again_until_the_write_goes_through():
    before = tracking.retries_on_busy_store()
    call = FlakyCall(3, MlflowException("(sqlite3.OperationalError) database is locked"))
    assert tracking.when_store_free(call) == "written"
    assert call.calls == 4 and tracking.retries_on_busy_store() == before + 3


def test_other_errors_are_not_retried():
    call = FlakyCall(1, MlflowException("Run 'abc' not found"))
    with pytest.raises(MlflowException, match="not found"):
        tracking.when_store_free(call)
    assert call.calls == 1


def test_a_store_locked_for_good_fails_after_the_last_try():
    call = FlakyCall(100, MlflowException("database is locked"))
    with pytest.raises(MlflowException, match="locked"):
        tracking.when_store_free(call)
    assert call.calls == tracking.LOCKED_STORE_TRIES


def test_run_logger_writes_through_a_locked_store(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    real = MlflowClient.log_batch
    state = {"failed": 0}

    def locked_twice(self, *args, **kwargs):
        if state["failed"] < 2:
            state["failed"] += 1
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", locked_twice)
    tracking.RunLogger(uri, run_id).log_metric_records([(step, {"loss": float(step)}) for step in range(5)])
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_request_that_failed_inside_the_client_is_tried_again_against_a_server():
    error = MlflowException("API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch failed with "
                            "exception '_MLFLOW_TELEMETRY_SESSION_ID'")
    call = FlakyCall(2, error)
    assert tracking.when_store_free(call, uri="http://127.0.0.1:5000") == "written" and call.calls == 3
    refused = FlakyCall(1, MlflowException("RESOURCE_DOES_NOT_EXIST: Run 'abc' not found"))
    with pytest.raises(MlflowException, match="not found"):
        tracking.when_store_free(refused, uri="http://127.0.0.1:5000")
    assert refused.calls == 1
