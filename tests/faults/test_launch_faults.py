"""Launch and tracking faults (issue #15): a job record whose scheduler cannot be asked, a tracking
server that is down when `hmsa submit` creates the stage run, a standalone training killed while its
MLflow run is RUNNING."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.cases import ROOT, Case, check

STAGE = ["--", "data", "synth", "--out", "{tmp}/synth", "--cityscapes", "train=1", "--mapillary", "training=1",
         "--size", "16x32"]


def _stale_slurm_record(tmp: Path) -> None:
    """A job.json left by a SLURM job, and a cluster file that still says slurm."""
    (tmp / "run").mkdir()
    (tmp / "run/job.json").write_text(json.dumps({
        "job_id": "4242", "executor": "slurm", "stage": "demo", "argv": STAGE[1:], "tasks": 1,
        "folder": str(tmp / "run/submitit/%j"), "history": ["4242"], "outcome": "submitted"}))
    (tmp / "slurm.yaml").write_text("executor: slurm\ndefaults: {timeout_min: 5}\n")
    # a controller nobody runs (port 9): squeue answers "Unable to contact slurm controller" in ~2 s
    (tmp / "slurm.conf").write_text("ClusterName=nowhere\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=9\n"
                                    "MessageTimeout=2\nAuthType=auth/none\n")


def _submit(cluster: str, run_dir: str = "{tmp}/run") -> list[str]:
    return ["submit", "--stage", "demo", "--kind", "prepare", "--run-dir", run_dir, "--cluster", cluster, *STAGE]


CASES = [
    # its own slurm.conf: no controller can be reached (and a neighbour's test cluster is never asked)
    Case("a stale job.json whose SLURM controller cannot be reached", _submit("{tmp}/slurm.yaml"),
         names="job.json", setup=_stale_slurm_record, env={"SLURM_CONF": "{tmp}/slurm.conf"},
         unfinished=("{tmp}/synth",)),
    Case("an invocation id from the environment with a quote", _submit(str(ROOT / "configs/cluster/local.yaml")),
         names="HMSA_INVOCATION_ID",
         env={"HMSA_TRACKING": "1", "HMSA_INVOCATION_ID": "x' OR '1'='1", "MLFLOW_TRACKING_URI": "sqlite:///{tmp}/m.db"},
         unfinished=("{tmp}/synth", "{tmp}/run/job.json")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)


@pytest.mark.slow  # a local submitit job, MLflow's connection attempts, a new SQLite store: ~1 min
def test_submit_needs_no_tracking_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Down at submit: the stage still runs and succeeds; its run is created when the server answers
    (`hmsa track --sync`), under the invocation's parent, named for the stage and FINISHED."""
    from mlflow.tracking import MlflowClient

    from hmsa import tracking
    from hmsa.cli import main

    monkeypatch.chdir(tmp_path)
    db_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("HMSA_TRACKING", "1")
    monkeypatch.setenv("HMSA_INVOCATION_ID", "inv-1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("HMSA_TRACKING_FINISH_WAIT_SECONDS", "0")
    run = tmp_path / "runs/demo"
    argv = _submit(str(ROOT / "configs/cluster/local.yaml"), str(run))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 0
    assert (tmp_path / "synth/SYNTH_COMPLETE.json").exists()
    recorded = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    assert recorded.startswith(tracking.PENDING)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", db_uri)  # the server is back
    assert main(["track", "--sync", str(tmp_path / "runs")]) == 0
    run_id = tracking.resolve_run_id(recorded, run)
    assert not run_id.startswith(tracking.PENDING)
    got = MlflowClient().get_run(run_id)
    assert got.info.run_name == "demo" and got.info.status == "FINISHED"
    assert got.data.tags["hmsa.stage"] == "demo" and got.data.tags.get("mlflow.parentRunId")
