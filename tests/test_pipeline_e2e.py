"""End to end: the real Snakemake DAG, real submitit local jobs, real MLflow (SQLite), on a tiny
version of the embedded pipeline: every stage runs, the tables are written from the metrics files,
MLflow holds one parent run with a child per stage, and a second invocation has nothing to do."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

pytestmark = pytest.mark.slow


def _tiny_pipeline(tmp: Path) -> Path:
    """The embedded pipeline with every experiment shrunk to a few iterations and images."""
    cfg = yaml.safe_load((ROOT / "configs/pipeline/embedded.yaml").read_text())
    exp_dir = tmp / "experiments"
    exp_dir.mkdir()
    for section in ("train", "autolabel"):
        for name, stage in cfg.get(section, {}).items():
            tiny = {"extends": str(ROOT / stage["experiment"]),
                    "data": {"crop": [32, 64], "max_images": 4},
                    "eval": {"max_images": 2, "save_maps": 1}}
            if section == "train":
                # A tenth of the embedded rate: three steps at the full rate can leave a model whose
                # BatchNorm statistics no longer fit its weights, and evaluation then stops on
                # non-finite logits (seen for the student on the SLURM run). These tests are about the
                # machinery, not about what the models learn.
                tiny["train"] = {"iterations": 3, "batch_size": 2, "checkpoint_every": 2, "log_every": 1,
                                 "lr": 0.005}
            path = exp_dir / f"{name}.yaml"
            path.write_text(yaml.safe_dump(tiny))
            stage["experiment"] = str(path)
    cfg["data"]["synth"] = {"cityscapes": {"train": 3, "val": 2, "train_extra": 3, "test": 2},
                            "mapillary": {"training": 3, "validation": 2}, "size": "64x128"}
    cfg["tracking"]["experiment"] = "hmsa-e2e"
    out = tmp / "pipeline.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def _snakemake(workdir: Path, pipeline: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--profile", str(ROOT / "workflows/profiles/default"), "--configfile", str(pipeline), *extra]
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)


def _mlflow_runs(db: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("hmsa-e2e")
    assert exp is not None, "the pipeline's MLflow experiment was not created"
    return client.search_runs([exp.experiment_id], max_results=500)


def test_whole_dag_runs_and_is_tracked(tmp_path: Path) -> None:
    pipeline = _tiny_pipeline(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    run = _snakemake(work, pipeline)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]

    cfg = yaml.safe_load(pipeline.read_text())
    # Every table cell comes from the metrics file of the evaluation it names.
    from hmsa.evaluation.settings import parse_setting

    for table in ("table1", "table2"):
        with open(work / "reports" / f"{table}.csv", newline="") as fh:
            cells = list(csv.DictReader(fh))
        assert len(cells) == len(cfg["tables"][table])
        for row, cell in zip(cfg["tables"][table], cells, strict=True):
            metrics = json.loads((work / "results" / row["evaluation"] / "metrics.json").read_text())
            miou = 100 * metrics["settings"][parse_setting(row["setting"]).name]["miou"]
            assert float(cell["ours mIoU"]) == pytest.approx(miou, abs=0.005)
            assert cell["MLflow run"] == metrics["mlflow_run_id"] != ""
    for t in ("table1", "table2", "table3", "table4", "claims"):
        text = (work / "reports" / f"{t}.md").read_text()
        assert "embedded synthetic dataset" in text
    # Table 3: the train+val student, scored on the held-out test split (never on val)
    assert json.loads((work / "results/evaluate_student/metrics.json").read_text())["split"] == "test"
    assert "scored on the `test` split, 2 images" in (work / "reports/table3.md").read_text()
    assert list((work / "results/evaluate_table1_hierarchical/maps").glob("*.png"))
    manifest = json.loads((work / "results/autolabel/manifest.json").read_text())
    assert manifest["threshold"] == 0.9 and manifest["images"] == 3

    stages = set(cfg["train"]) | set(cfg["evaluate"]) | set(cfg["autolabel"]) | {"prepare_cityscapes",
                                                                              "prepare_mapillary"}
    runs = _mlflow_runs(work / "mlflow.db")
    parents = [r for r in runs if r.data.tags.get("hmsa.kind") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # The parent run's params are the resolved pipeline config (what `mlflow ui` compares invocations by)
    assert parents[0].data.params["tracking.experiment"] == cfg["tracking"]["experiment"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.data.tags["hmsa.stage"] for r in children} == stages
    assert all(r.info.status == "FINISHED" for r in children)
    teacher = next(r for r in children if r.data.tags["hmsa.stage"] == "cityscapes_teacher")
    assert teacher.data.params["train.method"] == "hierarchical"
    student_eval = next(r for r in children if r.data.tags["hmsa.stage"] == "evaluate_student")
    assert any(k.startswith("miou/") for k in student_eval.data.metrics)

    again = _snakemake(work, pipeline, "-n")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr
