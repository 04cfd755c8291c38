"""The launcher: cluster files are validated, a stage runs through submitit's local executor, and a
failing stage's error reaches the caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmsa.launch import ClusterConfigError, load_cluster, submit

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
    runs = client.search_runs([client.get_experiment_by_name("hmsa").experiment_id])
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
