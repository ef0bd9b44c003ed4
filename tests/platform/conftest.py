"""test_predict.py's synthetic checkpoint and helpers, for every test that runs a small trained model on frames."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_celltune_predict_helpers", Path(__file__).with_name("test_predict.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)


@pytest.fixture(scope="session")
def predict_helpers():
    """test_predict.py as a module: build_checkpoint, build_test_data, variant_checkpoint, ctc_valid, ..."""
    return _helpers


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A U-Net trained for seconds on synthetic cells (built once per session; see build_checkpoint)."""
    return _helpers.build_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread, as a user's prediction on a busy machine would run (and as the other tests expect)."""
    with _helpers.one_torch_thread():
        yield
