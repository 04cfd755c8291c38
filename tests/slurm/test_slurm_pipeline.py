"""The embedded pipeline (tiny) on the real SLURM cluster with `--profile workflows/profiles/slurm`:
the head-node Snakemake is killed while a stage's job runs; run again, the job is re-attached, every
stage was submitted exactly once (counted with sacct), and the DDP stage ran on two SLURM tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import squeue_state, task_log, wait_until

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _pipeline(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_pipeline_e2e import _tiny_pipeline

    path = _tiny_pipeline(tmp)
    cfg = yaml.safe_load(path.read_text())
    cfg["cluster"] = str(ROOT / "configs/cluster/slurm-embedded.yaml")
    cfg["tracking"]["experiment"] = "hmsa-slurm-e2e"
    # The teacher trains long enough to be killed in the middle.
    teacher = Path(cfg["train"]["cityscapes_teacher"]["experiment"])
    exp = yaml.safe_load(teacher.read_text())
    exp["train"]["iterations"] = 40
    teacher.write_text(yaml.safe_dump(exp))
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _cmd(work: Path, pipeline: Path, *extra: str) -> list[str]:
    return [str(SNAKEMAKE), "-s", str(ROOT / "Snakefile"), "--directory", str(work), "--profile",
            str(ROOT / "workflows/profiles/slurm"), "--configfile", str(pipeline), "--latency-wait", "10", *extra]


def _submissions(stage: str, since: str) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", since, "--name", f"hmsa-{stage}", "-o", "JobID"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.split() if line]


def test_killed_head_node_reattaches_and_submits_each_stage_once(slurm_cluster: dict, tmp_path: Path) -> None:
    pipeline = _pipeline(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 - closed below
    head = subprocess.Popen(_cmd(work, pipeline), cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    teacher = work / "runs/cityscapes_teacher"
    rec = wait_until(lambda: (teacher / "job.json").exists() and json.loads((teacher / "job.json").read_text()),
                     1200, "the teacher's job")
    wait_until(lambda: squeue_state(rec["job_id"]) == "RUNNING", 300, "the teacher's job to run")
    os.killpg(head.pid, signal.SIGKILL)  # the login node's tmux dies: Snakemake and every hmsa submit
    head.wait(timeout=60)
    log.close()
    assert squeue_state(rec["job_id"]) in {"RUNNING", "COMPLETING"}  # the job itself goes on

    subprocess.run(_cmd(work, pipeline, "--unlock"), cwd=work, env=env, check=True, capture_output=True)
    again = subprocess.run(_cmd(work, pipeline), cwd=work, env=env, capture_output=True, text=True, timeout=3000)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"re-attached to job {rec['job_id']}" in (work / "logs/cityscapes_teacher.log").read_text()

    cfg = yaml.safe_load(pipeline.read_text())
    stages = [*cfg["train"], *cfg["evaluate"], *cfg["autolabel"], "prepare_cityscapes", "prepare_mapillary"]
    counts = {s: len(_submissions(s, since)) for s in stages}
    assert counts == dict.fromkeys(stages, 1)  # never two jobs for one stage
    job = json.loads((teacher / "job.json").read_text())
    assert job["job_id"] == rec["job_id"] and job["tasks"] == 2 and job["history"] == [rec["job_id"]]
    assert "global_rank=1(2)" in task_log(teacher, rec["job_id"], 1)  # DDP on two tasks
    final = subprocess.run(_cmd(work, pipeline, "-n"), cwd=work, env=env, capture_output=True, text=True)
    assert "Nothing to be done" in final.stdout + final.stderr
