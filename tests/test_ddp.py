"""Two processes through submitit's local executor (tasks_per_node: 2, gloo on CPU): DDP training
runs on both ranks, and a distributed evaluation counts every image exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hmsa.launch import submit

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_two_rank_training_and_evaluation(embedded_data: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_TRACKING", "0")
    cluster = tmp_path / "two.yaml"
    cluster.write_text("executor: local\ndefaults: {timeout_min: 10, tasks_per_node: 2, cpus_per_task: 1}\n")
    root = f"data.root={embedded_data / 'cityscapes'}"
    code = submit("ddp_train", "train", tmp_path / "run", cluster,
                  ["train", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--run-dir",
                   str(tmp_path / "run"), "--out-model", str(tmp_path / "m.pt"), root])
    assert code == 0
    logs = sorted((tmp_path / "run/submitit").rglob("*_log.out"))
    assert len(logs) == 2  # one task per rank
    code = submit("ddp_eval", "evaluate", tmp_path / "eval_run", cluster,
                  ["evaluate", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model",
                   str(tmp_path / "m.pt"), "--out-dir", str(tmp_path / "eval"), "--setting", "single:1",
                   root, "eval.max_images=0"])
    assert code == 0
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert metrics["images"] == 2  # the val split, split across 2 ranks, each image once
