"""Shared fixtures: tests run on CPU, on generated data, with MLflow in a temporary SQLite file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
