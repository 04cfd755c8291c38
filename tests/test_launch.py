"""The launcher: cluster files are validated, a stage runs through submitit's local executor, and a
failing stage's error reaches the caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmsa import tracking
from hmsa.orchestration.launch import ClusterConfigError, load_cluster, submit

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_cluster_file_loads() -> None:
    cluster = load_cluster(ROOT / "configs/cluster/local.yaml")
    assert cluster.executor == "local"
    assert cluster.resources("anything", "train")["timeout_min"] > 0


def test_cluster_file_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("executor: local\ndefaults: {gpus: 2}\n")
    with pytest.raises(ClusterConfigError, match=r"c\.yaml: unknown key 'defaults\.gpus'"):
        load_cluster(bad)
    bad.write_text("executor: kubernetes\n")
    with pytest.raises(ClusterConfigError, match="executor"):
        load_cluster(bad)


def test_precedence_defaults_kind_stage(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("executor: local\ndefaults: {timeout_min: 5, cpus_per_task: 1}\n"
                 "kinds: {train: {timeout_min: 50}}\nstages: {teacher: {timeout_min: 500}}\n")
    c = load_cluster(f)
    assert c.resources("x", "evaluate")["timeout_min"] == 5
    assert c.resources("x", "train")["timeout_min"] == 50
    assert c.resources("teacher", "train") == {"timeout_min": 500, "cpus_per_task": 1}


def test_submit_runs_a_stage_and_records_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_INVOCATION_ID", "inv-test")
    code = submit("demo", "train", tmp_path / "run", ROOT / "configs/cluster/local.yaml",
                  ["track", "--invocation", "other", "--experiment", "scratch"])
    assert code == 0
    assert (tmp_path / "run" / "job.json").exists()
    assert (tmp_path / "run" / "mlflow_run.json").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id])
    stage = [r for r in runs if r.data.tags.get("hmsa.stage") == "demo"]
    parent = [r for r in runs if r.data.tags.get("hmsa.invocation") == "inv-test"]
    assert len(stage) == 1 and stage[0].info.status == "FINISHED"
    assert stage[0].data.tags["mlflow.parentRunId"] == parent[0].info.run_id


def test_failing_stage_returns_nonzero_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_TRACKING", "0")
    code = submit("broken", "train", tmp_path / "run", ROOT / "configs/cluster/local.yaml",
                  ["train", "--config", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "r")])
    assert code == 1
    err = capsys.readouterr().err
    assert "stage broken failed" in err and "missing.yaml" in err


def test_job_threads_come_from_slurm_else_the_cluster_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from hmsa.orchestration.launch import allocated_threads

    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert allocated_threads(2) == (2, "cpus_per_task of the cluster file")
    assert allocated_threads(0) is None  # nothing known: the inherited OMP_NUM_THREADS stays
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")  # inside a SLURM job, the allocation wins
    assert allocated_threads(2) == (6, "SLURM_CPUS_PER_TASK")


def test_a_stage_job_runs_on_the_cpus_per_task_of_its_cluster_file(
        embedded_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Snakemake gives `hmsa submit` OMP_NUM_THREADS=1 (a rule's threads): the job still runs torch on
    the stage's cpus_per_task (3 here, not this machine's core count), and trains into the MLflow run
    that `hmsa submit` made while the job started."""
    import json

    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("HMSA_LOG_LEVEL", "INFO")
    monkeypatch.setenv("HMSA_INVOCATION_ID", "inv-threads")
    cluster = tmp_path / "c.yaml"
    cluster.write_text("executor: local\ndefaults: {timeout_min: 10, cpus_per_task: 1}\n"
                       "kinds: {train: {cpus_per_task: 2}}\nstages: {threads: {cpus_per_task: 3}}\n")
    run = tmp_path / "run"
    code = submit("threads", "train", run, cluster,
                  ["train", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--run-dir", str(run),
                   "--out-metrics", str(tmp_path / "train.json"), f"data.root={embedded_data / 'cityscapes'}",
                   "train.iterations=2"])
    out = capsys.readouterr().out  # the job's log, echoed by `hmsa submit`
    assert code == 0, out
    assert "hmsa: job threads: 3 (cpus_per_task of the cluster file; inherited OMP_NUM_THREADS=1)" in out
    assert "torch threads: 3 (OMP_NUM_THREADS=3)" in out  # what the training process itself runs on
    record = json.loads((run / "mlflow_run.json").read_text())
    assert json.loads((tmp_path / "train.json").read_text())["mlflow_run_id"] == record["run_id"]
    r = MlflowClient().get_run(record["run_id"])
    assert r.info.status == "FINISHED" and r.data.tags["hmsa.stage"] == "threads"
    assert "mlflow.parentRunId" in r.data.tags and "loss/total" in r.data.metrics


def test_compute_rules_declare_the_threads_of_their_cluster_file(tmp_path: Path) -> None:
    """Each `hmsa submit` rule's `threads` is its stage's cpus_per_task (defaults < kinds < stages), and
    the default profile lets it have them (`--cores 8` here only lifts this machine's cap)."""
    import re
    import subprocess
    import sys

    cluster = tmp_path / "c.yaml"
    cluster.write_text("executor: local\ndefaults: {timeout_min: 5, cpus_per_task: 3}\n"
                       "kinds: {evaluate: {cpus_per_task: 1}}\nstages: {cityscapes_teacher: {cpus_per_task: 5}}\n")
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n", "--directory",
           str(tmp_path), "--profile", str(ROOT / "workflows/profiles/default"), "--cores", "8",
           "--printshellcmds", "--config", f"cluster={cluster}"]  # the profile hides shell commands
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    blocks = dict(re.findall(r"rule (\w+):\n(.*?)\n\n", out.stdout + out.stderr, re.S))
    threads = {rule: int(m.group(1)) if (m := re.search(r"threads: (\d+)", b)) else 1 for rule, b in blocks.items()}
    assert threads["cityscapes_teacher"] == 5 and threads["mapillary_pretrain"] == 3
    assert threads["prepare_cityscapes"] == 3 and threads["autolabel"] == 3
    assert threads["evaluate_mapillary"] == 1 and threads["embedded_data"] == 1 and threads["report"] == 1
    # One `stage_jobs` per compute rule: the profile's `resources: {stage_jobs: N}` runs N stages at a time.
    assert all(("stage_jobs=1" in b) == ("hmsa submit" in b) for b in blocks.values())


@pytest.mark.slow
def test_a_local_job_left_running_is_stopped_before_the_stage_runs_again(
        embedded_data: Path, tmp_path: Path) -> None:
    """submitit cannot re-attach to a local job from another process: the orphan is stopped, so two
    trainings never write one run dir, and the new job resumes from the orphan's checkpoint."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hmsa", "submit", "--stage", "orphan", "--run-dir", str(run), "--cluster",
           str(ROOT / "configs/cluster/local.yaml"), "--", "train", "--config",
           str(ROOT / "configs/experiments/tiny.yaml"), "--run-dir", str(run),
           f"data.root={embedded_data / 'cityscapes'}", "train.iterations=400",
           "train.checkpoint_every=1"]
    env = {**os.environ, "HMSA_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints/last.pt").exists():
        assert time.time() < deadline and first.poll() is None, "the first job never checkpointed"
        time.sleep(0.5)
    orphan = int(json.loads((run / "job.json").read_text())["job_id"])
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert psutil.pid_exists(orphan)  # the local job outlived its submitter
    short = [*cmd[:-2], "train.iterations=3", "train.checkpoint_every=1"]  # a changed command: no resume
    second = subprocess.run(short, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert not psutil.pid_exists(orphan) or psutil.Process(orphan).status() == psutil.STATUS_ZOMBIE
    assert json.loads((run / "job.json").read_text())["history"][0] == str(orphan)
