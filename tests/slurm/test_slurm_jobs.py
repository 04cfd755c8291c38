"""Stages on a real SLURM cluster through `hmsa submit`: result, failure, cancel, re-attaching after
the submitting process is killed (one submission, counted by sacct), requeue on timeout resuming from
the checkpoint in the same MLflow run, and a two-task DDP stage."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hmsa.orchestration.launch import submit

from .conftest import cluster_file, handler_checkpointed, restarts, sacct_jobs, squeue_state, task_log, wait_until

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs/experiments/tiny.yaml"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _train_argv(run: Path, data: Path, iterations: int, *extra: str, log_every: int = 5) -> list[str]:
    return ["train", "--config", str(TINY), "--run-dir", str(run), "--out-model", str(run / "model.pt"),
            "--out-metrics", str(run / "train.json"), f"data.root={data / 'cityscapes'}",
            f"train.iterations={iterations}", "train.checkpoint_every=2", f"train.log_every={log_every}", *extra]


def _start_submit(stage: str, run: Path, cluster: Path, argv: list[str], cwd: Path,
                  expect: tuple[Path, ...] = ()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hmsa", "submit", "--stage", stage, "--kind", "train", "--run-dir", str(run),
           "--cluster", str(cluster), *[a for p in expect for a in ("--expect", str(p))], "--", *argv]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _running_job(run: Path) -> str:
    """Wait until the stage's recorded job runs; its id."""
    rec = wait_until(lambda: (run / "job.json").exists() and json.loads((run / "job.json").read_text()),
                     120, "job.json")
    wait_until(lambda: squeue_state(rec["job_id"]) == "RUNNING", 180, f"job {rec['job_id']} RUNNING")
    return rec["job_id"]


def _kill_submitter_then_reattach(stage: str, run: Path, cluster: Path, argv: list[str], cwd: Path,
                                  timeout: float) -> str:
    """Start ``hmsa submit``, SIGKILL it once its job runs (the head node dies, the job goes on), then
    run it again: it must re-attach to that job, not submit another. The job's id."""
    outputs = (run / "model.pt", run / "train.json")  # what the Snakemake rule would --expect
    first = _start_submit(stage, run, cluster, argv, cwd, expect=outputs)
    job_id = _running_job(run)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert squeue_state(job_id) == "RUNNING"
    second = _start_submit(stage, run, cluster, argv, cwd, expect=outputs)
    out, err = second.communicate(timeout=timeout)
    assert second.returncode == 0, out + err
    assert f"re-attached to job {job_id}" in err
    assert [j["id"] for j in sacct_jobs(f"hmsa-{stage}")] == [job_id]  # one submission
    return job_id


def test_result_failure_and_cancel(slurm_cluster: dict, uid: str, embedded_data: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_TRACKING", "0")
    cluster = cluster_file(tmp_path)
    ok = submit(f"verify_ok_{uid}", "prepare", tmp_path / "ok", cluster,
                ["data", "verify", "--dataset", "cityscapes", "--root", str(embedded_data / "cityscapes")])
    assert ok == 0
    assert json.loads((tmp_path / "ok/job.json").read_text())["executor"] == "slurm"
    wait_until(lambda: [j["state"] for j in sacct_jobs(f"hmsa-verify_ok_{uid}")] == ["COMPLETED"], 60,
               "one COMPLETED job")

    missing = tmp_path / "no-such-dataset"
    bad = submit(f"verify_bad_{uid}", "prepare", tmp_path / "bad", cluster,
                 ["data", "verify", "--dataset", "cityscapes", "--root", str(missing)])
    assert bad == 1
    err = capsys.readouterr().err
    assert f"stage verify_bad_{uid} failed" in err and str(missing) in err  # the job's own error reached us

    proc = _start_submit(f"cancel_me_{uid}", tmp_path / "c", cluster, _train_argv(tmp_path / "c", embedded_data, 5000),
                         tmp_path)
    job_id = _running_job(tmp_path / "c")
    subprocess.run(["scancel", job_id], check=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, out + err
    assert f"stage cancel_me_{uid} failed" in err
    wait_until(lambda: sacct_jobs(f"hmsa-cancel_me_{uid}")[0]["state"].startswith("CANCELLED"), 60, "CANCELLED")


def test_reattach_after_the_submitter_is_killed(slurm_cluster: dict, uid: str, embedded_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMSA_TRACKING", "0")
    cluster, run = cluster_file(tmp_path), tmp_path / "run"
    argv = _train_argv(run, embedded_data, 60)
    stage = f"reattach_{uid}"
    outputs = (run / "model.pt", run / "train.json")
    _kill_submitter_then_reattach(stage, run, cluster, argv, tmp_path, timeout=900)
    wait_until(lambda: sacct_jobs(f"hmsa-{stage}")[0]["state"] == "COMPLETED", 60, "COMPLETED")
    assert json.loads((run / "train.json").read_text())["resumed_from"] == 0  # never restarted
    # A third call collects the finished job, its outputs being there, instead of submitting again ...
    third = _start_submit(stage, run, cluster, argv, tmp_path, expect=outputs)
    assert third.wait(timeout=300) == 0
    assert len(sacct_jobs(f"hmsa-{stage}")) == 1
    # ... also after Snakemake deleted the outputs of the rule it re-runs: the job kept them.
    (run / "train.json").unlink()
    fourth = _start_submit(stage, run, cluster, argv, tmp_path, expect=outputs)
    assert fourth.wait(timeout=300) == 0
    assert len(sacct_jobs(f"hmsa-{stage}")) == 1
    assert json.loads((run / "train.json").read_text())["resumed_from"] == 0
    # A job whose outputs cannot be put back is run again; it resumes from the final checkpoint.
    (run / "train.json").unlink()
    shutil.rmtree(run / "collected")
    fifth = _start_submit(stage, run, cluster, argv, tmp_path, expect=outputs)
    assert fifth.wait(timeout=300) == 0
    assert json.loads((run / "train.json").read_text())["resumed_from"] == 60
    assert len(json.loads((run / "job.json").read_text())["history"]) == 2
    # slurmctld hands job records to slurmdbd asynchronously: a job that ran in seconds on a busy
    # machine can finish before sacct lists it (CI saw that once), so the count waits for accounting.
    wait_until(lambda: len(sacct_jobs(f"hmsa-{stage}")) == 2, 60, "two jobs in sacct")


def test_timeout_requeues_and_resumes_in_the_same_mlflow_run(slurm_cluster: dict, uid: str, embedded_data: Path,
                                                             tmp_path: Path) -> None:
    import submitit
    from mlflow.tracking import MlflowClient

    cluster, run = cluster_file(tmp_path), tmp_path / "run"
    stage = f"requeue_{uid}"
    proc = _start_submit(stage, run, cluster, _train_argv(run, embedded_data, 80, log_every=1), tmp_path)
    job_id = _running_job(run)
    wait_until(lambda: (run / "checkpoints/last.pt").exists(), 300, "a first checkpoint")
    submitit.SlurmJob(folder=str(run / "submitit/%j"), job_id=job_id)._interrupt(timeout=True)
    out, err = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out + err
    assert handler_checkpointed(task_log(run, job_id, 0))  # submitit's own requeue, not a new submission
    result = json.loads((run / "train.json").read_text())
    assert 0 < result["resumed_from"] < 80  # the requeued job continued from the saved iteration
    assert restarts(job_id) >= 1
    assert len(sacct_jobs(f"hmsa-{stage}")) == 1  # the same job id, requeued: no second submission
    run_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    assert result["mlflow_run_id"] == run_id
    client = MlflowClient()
    stage_runs = [r for r in client.search_runs([json.loads((run / "mlflow_run.json").read_text())
                                                 ["experiment_id"]]) if r.data.tags.get("hmsa.stage") == stage]
    assert [r.info.run_id for r in stage_runs] == [run_id] and stage_runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss/total")]
    # Both attempts logged into the one run, and no step was lost or logged twice.
    assert sorted(steps) == list(range(1, 81))


def test_two_task_ddp_stage(slurm_cluster: dict, uid: str, embedded_data: Path, tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_TRACKING", "0")
    cluster, run = cluster_file(tmp_path, **{f"ddp_{uid}": {"tasks_per_node": 2, "gpus_per_node": 2}}), tmp_path / "run"
    assert submit(f"ddp_{uid}", "train", run, cluster, _train_argv(run, embedded_data, 6)) == 0
    job_id = json.loads((run / "job.json").read_text())["job_id"]
    folder = run / "submitit" / job_id
    from submitit.core.utils import pickle_load

    outcomes = [pickle_load(folder / f"{job_id}_{t}_result.pkl")[0] for t in (0, 1)]
    assert outcomes == ["success", "success"]  # both SLURM tasks ran the stage to the end
    for t in (0, 1):
        assert f"global_rank={t}(2)" in task_log(run, job_id, t)  # submitit's env: rank t of 2
    assert torch.load(run / "model.pt", weights_only=True)["model"]  # rank 0 exported the model
