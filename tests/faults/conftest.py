"""Fixtures for the fault tables: a private copy of the embedded test data per case (cases damage it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def data(embedded_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``{data}`` of a Case: ``tmp/data`` holding ``cityscapes/`` and ``mapillary/``; no tracking."""
    monkeypatch.setenv("HMSA_TRACKING", "0")
    shutil.copytree(embedded_data, tmp_path / "data")
    return tmp_path / "data"
