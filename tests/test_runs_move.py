"""Runs that move: a checkout with its results and MLflow store, moved to another path (scratch to
project storage), has nothing to re-run — rule params and inputs hold paths relative to the working
directory, and MLflow's artifact locations are relative to it, so the moved store still finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TARGET = "results/evaluate_table1_single/metrics.json"  # synth -> prepare -> train -> evaluate


def _checkout(dst: Path) -> None:
    """The project's files as a clone has them (tracked + new, not ignored), modification times kept."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)


def _tiny_pipeline(project: Path) -> str:
    """The embedded pipeline, shrunk, with every path in it relative (as the shipped configs are)."""
    cfg = yaml.safe_load((project / "configs/pipeline/embedded.yaml").read_text())
    (project / "tiny").mkdir()
    for name, stage in cfg["train"].items():
        tiny = {"extends": f"../{stage['experiment']}", "data": {"crop": [32, 64], "max_images": 4},
                "train": {"iterations": 2, "batch_size": 2, "checkpoint_every": 2, "log_every": 1},
                "eval": {"max_images": 2, "save_maps": 0}}
        (project / "tiny" / f"{name}.yaml").write_text(yaml.safe_dump(tiny))
        stage["experiment"] = f"tiny/{name}.yaml"
    cfg["data"]["synth"] = {"cityscapes": {"train": 2, "val": 2, "train_extra": 2, "test": 2},
                            "mapillary": {"training": 3, "validation": 2}, "size": "64x128"}
    cfg["tracking"]["experiment"] = "hmsa-move"
    cfg["versioning"] = {"enabled": False}
    (project / "tiny-pipeline.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return "tiny-pipeline.yaml"


def _snakemake(project: Path, pipeline: str, *extra: str) -> subprocess.CompletedProcess:
    # The pipeline's own `sqlite:///mlflow.db`, in the working directory, not the tests' store.
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [str(SNAKEMAKE), "-s", "Snakefile", "--profile", "workflows/profiles/default", "--configfile", pipeline,
           "--cores", "2", *extra, TARGET]
    return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_a_moved_checkout_has_nothing_to_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, moved = tmp_path / "scratch" / "hmsa", tmp_path / "project" / "hmsa"
    _checkout(first)
    pipeline = _tiny_pipeline(first)
    run = _snakemake(first, pipeline)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    moved.parent.mkdir(parents=True)
    shutil.copytree(first, moved, symlinks=True)  # copy2: modification times kept, as `mv` or `cp -a` keep them
    shutil.rmtree(first)  # nothing may still point at the old place
    dry = _snakemake(moved, pipeline, "-n")
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:] + dry.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(moved)  # as `mlflow ui` is started, in the project directory
    client = MlflowClient(tracking_uri="sqlite:///mlflow.db")
    exp = client.get_experiment_by_name("hmsa-move")
    assert exp is not None and exp.artifact_location == f"mlruns/{exp.experiment_id}"
    assert all(e.artifact_location == f"mlruns/{e.experiment_id}" for e in client.search_experiments())
    runs = client.search_runs([exp.experiment_id])
    assert runs and all(r.info.artifact_uri.startswith(f"mlruns/{exp.experiment_id}/") for r in runs)
    assert any(client.list_artifacts(r.info.run_id) for r in runs)  # the moved store reads its artifacts


def test_artifact_locations_are_relative_to_a_store_in_the_working_directory(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from hmsa import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # absolute, as jobs get it
    exp = tracking.ensure_experiment("here")
    client = MlflowClient()
    assert client.get_experiment(exp).artifact_location == f"mlruns/{exp}"
    run = client.create_run(exp)
    assert run.info.artifact_uri == f"mlruns/{exp}/{run.info.run_id}/artifacts"
    (tmp_path / "a.txt").write_text("a")
    client.log_artifact(run.info.run_id, str(tmp_path / "a.txt"))
    assert (tmp_path / run.info.artifact_uri / "a.txt").is_file()
    # A store elsewhere (the tests' own, a server) keeps MLflow's absolute locations.
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    other = tracking.ensure_experiment("there")
    assert Path(client.get_experiment(other).artifact_location.removeprefix("file://")).is_absolute()
