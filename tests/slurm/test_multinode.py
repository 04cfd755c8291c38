"""Two-node stages on the multi-node test cluster (``tests/slurm/multinode.sh``: two slurmd in their own
network namespaces): the cluster itself, DDP across the nodes through submitit (1 and 2 tasks per
node), and the faults that only happen across nodes — a timeout requeue, a node going down mid-job,
the submitting process killed while the two-node job runs.

Run them alone with ``pytest -m multinode``; they are also ``slurm`` tests, so CI runs them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from hmsa.orchestration.launch import submit

from .conftest import cluster_file, handler_checkpointed, restarts, sacct_jobs, task_log, wait_until
from .test_slurm_jobs import _kill_submitter_then_reattach, _running_job, _start_submit, _train_argv

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.slow]
RANK_LINE = re.compile(r"rank (\d+) of (\d+) on (\S+) \(local rank (\d+)\), rendezvous (\S+):(\d+), gloo")
DIGEST_LINE = re.compile(r"rank (\d+) of (\d+): parameters sha256 (\w+)")


def _hostnames(nodelist: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def _job_nodes(job_id: str) -> list[str]:
    """The job's hosts in SLURM's order (rank 0 runs on the first). A job slurmctld still holds is asked of
    it: accounting learns of a job's start asynchronously through slurmdbd, and until then ``sacct`` says
    "None assigned" for a running job: one "host", the IndexError of a CI run (inferred from its traceback).
    An ended job is asked of accounting, which has it by then."""
    live = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%N"], capture_output=True, text=True).stdout.strip()
    if live:
        return _hostnames(live)
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "NodeList"], capture_output=True,
                         text=True, check=True).stdout.split()
    return _hostnames(out[-1])


def test_two_idle_nodes_and_srun_across_them(multinode_cluster: dict) -> None:
    states = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, check=True)
    nodes = dict(line.split() for line in states.stdout.splitlines())
    assert sorted(nodes) == ["hmsa-mn1", "hmsa-mn2"] and set(nodes.values()) <= {"idle", "mix"}, nodes
    out = subprocess.run(["srun", "-N2", "-n2", "hostname"], capture_output=True, text=True, timeout=60, check=True)
    assert sorted(out.stdout.split()) == ["hmsa-mn1", "hmsa-mn2"]  # each task saw its own node's UTS name


@pytest.mark.parametrize("tasks_per_node", [1, 2])
def test_ddp_stage_across_two_nodes(multinode_cluster: dict, uid: str, embedded_data: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch, tasks_per_node: int) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_TRACKING", "0")
    monkeypatch.setenv("HMSA_LOG_LEVEL", "INFO")  # the rank and digest lines are INFO
    stage, run = f"mn_ddp{tasks_per_node}_{uid}", tmp_path / "run"
    cluster = cluster_file(tmp_path, **{stage: {"nodes": 2, "tasks_per_node": tasks_per_node}})
    assert submit(stage, "train", run, cluster, _train_argv(run, embedded_data, 4)) == 0
    job_id = json.loads((run / "job.json").read_text())["job_id"]
    world, hosts = 2 * tasks_per_node, _job_nodes(job_id)
    assert sorted(hosts) == ["hmsa-mn1", "hmsa-mn2"]
    logs = [task_log(run, job_id, t) for t in range(world)]
    ranks = [RANK_LINE.search(text) for text in logs]
    assert all(ranks), logs
    rendezvous = {(m.group(5), m.group(6)) for m in ranks if m}
    assert len(rendezvous) == 1 and next(iter(rendezvous))[0] == hosts[0]  # one port; the first host
    for t, m in enumerate(ranks):
        assert m is not None
        # submitit's SLURM environment: SLURM_PROCID, SLURM_NTASKS, block placement, SLURM_LOCALID
        assert (int(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4))) == \
            (t, world, hosts[t // tasks_per_node], t % tasks_per_node)
    digests = {int(m.group(1)): m.group(3) for text in logs for m in DIGEST_LINE.finditer(text)}
    assert sorted(digests) == list(range(world)) and len(set(digests.values())) == 1, digests  # same weights
    # One checkpoint writer on the shared file system: rank 0, at iterations 2 and 4.
    assert logs[0].count("rank 0 saved the checkpoint") == 2
    assert all("saved the checkpoint" not in text for text in logs[1:])
    assert torch.load(run / "model.pt", weights_only=True)["model"]
    if tasks_per_node == 1:
        # The same two ranks on one node train the same weights, bit for bit: a two-rank all-reduce is
        # one addition, whatever the hosts (what makes a 2-node teacher's tables equal a 1-node one's).
        other = tmp_path / "one-node"
        one = cluster_file(tmp_path, **{f"{stage}_1n": {"nodes": 1, "tasks_per_node": 2}})
        assert submit(f"{stage}_1n", "train", other, one, _train_argv(other, embedded_data, 4)) == 0
        one_id = json.loads((other / "job.json").read_text())["job_id"]
        assert len(set(_job_nodes(one_id))) == 1
        again = {m.group(3) for t in (0, 1) for m in DIGEST_LINE.finditer(task_log(other, one_id, t))}
        assert again == set(digests.values())


def _two_node_cluster(tmp_path: Path, stage: str) -> Path:
    return cluster_file(tmp_path, **{stage: {"nodes": 2, "tasks_per_node": 1}})


def test_two_node_timeout_requeues_and_resumes_in_the_same_mlflow_run(multinode_cluster: dict, uid: str,
                                                                       embedded_data: Path, tmp_path: Path) -> None:
    import submitit
    from mlflow.tracking import MlflowClient

    stage, run, total = f"mn_requeue_{uid}", tmp_path / "run", 30
    proc = _start_submit(stage, run, _two_node_cluster(tmp_path, stage),
                         _train_argv(run, embedded_data, total, log_every=1), tmp_path)
    job_id = _running_job(run)
    wait_until(lambda: (run / "checkpoints/last.pt").exists(), 300, "a first checkpoint")
    submitit.SlurmJob(folder=str(run / "submitit/%j"), job_id=job_id)._interrupt(timeout=True)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, out + err
    assert handler_checkpointed(task_log(run, job_id, 0))  # rank 0's handler asked for the requeue
    result = json.loads((run / "train.json").read_text())
    assert 0 < result["resumed_from"] < total  # both nodes continued from the saved iteration
    assert restarts(job_id) >= 1 and len(sacct_jobs(f"hmsa-{stage}")) == 1
    record = json.loads((run / "mlflow_run.json").read_text())
    assert result["mlflow_run_id"] == record["run_id"]
    client = MlflowClient()
    runs = [r for r in client.search_runs([record["experiment_id"]]) if r.data.tags.get("hmsa.stage") == stage]
    assert [r.info.run_id for r in runs] == [record["run_id"]] and runs[0].info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(record["run_id"], "loss/total"))
    assert steps == list(range(1, total + 1))  # rank 0 alone logged, each step once, across both attempts


def test_a_node_going_down_mid_job_requeues_it(multinode_cluster: dict, uid: str, embedded_data: Path,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMSA_TRACKING", "0")
    # Long enough to outlast KillWait: submitit ignores the SIGTERM that SLURM sends when the node goes
    # down, so both ranks train on until the SIGKILL 10 s later (tests/slurm/multinode.sh). 100 iterations
    # did not on a fast CPU (~6 s for one process): the first attempt finished, and nothing resumed.
    stage, run, total = f"mn_nodedown_{uid}", tmp_path / "run", 500
    proc = _start_submit(stage, run, _two_node_cluster(tmp_path, stage), _train_argv(run, embedded_data, total),
                         tmp_path)
    job_id = _running_job(run)
    wait_until(lambda: (run / "checkpoints/last.pt").exists(), 300, "a first checkpoint")
    victim = _job_nodes(job_id)[1]  # the node of rank 1: rank 0 must not wait for it forever
    try:
        subprocess.run(["scontrol", "update", f"nodename={victim}", "state=down", "reason=hmsa-test"], check=True)
        # SLURM kills the job on every node and requeues it; the node returns to service when its slurmd
        # registers again (ReturnToService=2), as a rebooted node would.
        wait_until(lambda: restarts(job_id) >= 1, 60, f"job {job_id} requeued")
        out, err = proc.communicate(timeout=600)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={victim}", "state=resume"], capture_output=True)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + err
    result = json.loads((run / "train.json").read_text())
    assert 0 < result["resumed_from"] < total  # the requeued job resumed from rank 0's checkpoint
    assert len(sacct_jobs(f"hmsa-{stage}")) == 1


def test_reattach_to_a_two_node_job_after_the_submitter_is_killed(multinode_cluster: dict, uid: str,
                                                                  embedded_data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMSA_TRACKING", "0")
    stage, run = f"mn_reattach_{uid}", tmp_path / "run"
    cluster, argv = _two_node_cluster(tmp_path, stage), _train_argv(run, embedded_data, 20)
    _kill_submitter_then_reattach(stage, run, cluster, argv, tmp_path, timeout=600)  # the two-node job goes on
    assert json.loads((run / "train.json").read_text())["resumed_from"] == 0  # never restarted
