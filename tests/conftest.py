"""Shared fixtures: tests run on CPU, on generated data, with MLflow in a temporary SQLite file."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mlflow_server import Server


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes into the project's mlflow.db or .hmsa/ lock dir."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HMSA_LOCK_DIR", str(tmp_path / ".hmsa" / "locks"))
    monkeypatch.delenv("HMSA_MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("HMSA_INVOCATION_ID", raising=False)
    os.environ.setdefault("HMSA_LOG_LEVEL", "WARNING")


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small embedded dataset (both layouts), generated once per test session."""
    from hmsa.data.synth import generate

    root = tmp_path_factory.mktemp("embedded") / "data"
    generate(root, seed=0, cityscapes_counts={"train": 4, "val": 2, "train_extra": 3},
             mapillary_counts={"training": 4, "validation": 2}, size=(64, 128))
    return root


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ``mlflow server`` on 127.0.0.1 with its own SQLite store, one per test module."""
    from mlflow_server import Server

    s = Server(tmp_path_factory.mktemp("mlflow-server"))
    s.start(timeout=900)  # two busy cores: the first start migrates the SQLite schema slowly
    yield s
    s.stop()
