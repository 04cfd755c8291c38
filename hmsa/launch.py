"""The only path from the DAG to compute: ``hmsa submit`` runs one stage through submitit.

A ``StageJob`` is a picklable job object (like dinov2's): ``__call__`` runs an ``hmsa`` subcommand
inside the job (importing the heavy code lazily), ``checkpoint()`` returns a resubmission of itself —
training resumes from its run dir by default, so a requeue needs no special path. The cluster facts
(executor, partition, GPUs, time) come from ``configs/cluster/*.yaml``, never from code.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hmsa import tracking
from hmsa.io import atomic_write_json

log = logging.getLogger("hmsa.launch")

EXECUTORS = ("local", "slurm", "debug")
# Resource keys accepted in a cluster file, mapped to submitit's AutoExecutor parameter names.
RESOURCE_KEYS = {
    "timeout_min": "timeout_min", "nodes": "nodes", "tasks_per_node": "tasks_per_node",
    "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb",
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "constraint": "slurm_constraint", "max_requeue": "slurm_max_num_timeout",
    "additional_parameters": "slurm_additional_parameters",
}


class ClusterConfigError(ValueError):
    pass


@dataclass
class ClusterConfig:
    path: str
    executor: str
    defaults: dict[str, Any] = field(default_factory=dict)
    kinds: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def resources(self, stage: str, kind: str) -> dict[str, Any]:
        """defaults < per-kind < per-stage."""
        return {**self.defaults, **self.kinds.get(kind, {}), **self.stages.get(stage, {})}


def _check_resources(path: str, where: str, res: Any) -> dict[str, Any]:
    if not isinstance(res, dict):
        raise ClusterConfigError(f"{path}: '{where}' must be a mapping")
    for key in res:
        if key not in RESOURCE_KEYS:
            raise ClusterConfigError(f"{path}: unknown key '{where}.{key}' (known: {', '.join(RESOURCE_KEYS)})")
    return res


def load_cluster(path: str | Path) -> ClusterConfig:
    p = Path(path)
    if not p.is_file():
        raise ClusterConfigError(f"{p}: cluster config not found")
    data = yaml.safe_load(p.read_text()) or {}
    unknown = set(data) - {"executor", "defaults", "kinds", "stages"}
    if unknown:
        raise ClusterConfigError(f"{p}: unknown key '{sorted(unknown)[0]}'")
    executor = data.get("executor", "local")
    if executor not in EXECUTORS:
        raise ClusterConfigError(f"{p}: 'executor' must be one of {EXECUTORS}, got {executor!r}")
    defaults = _check_resources(str(p), "defaults", data.get("defaults", {}))
    kinds = {k: _check_resources(str(p), f"kinds.{k}", v) for k, v in (data.get("kinds") or {}).items()}
    stages = {k: _check_resources(str(p), f"stages.{k}", v) for k, v in (data.get("stages") or {}).items()}
    return ClusterConfig(str(p), executor, defaults, kinds, stages)


@dataclass
class StageJob:
    """Runs ``hmsa <argv>`` on every task of the job."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self) -> int:
        os.environ.update(self.env)
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT for torch.distributed.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        os.environ.setdefault("HMSA_SLURM_JOB_ID", str(env.job_id))
        from hmsa.cli import main

        code = main(self.argv)
        if code:
            raise RuntimeError(f"hmsa {' '.join(self.argv)} exited with status {code}")
        return code

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on timeout/preemption: resubmit; the stage resumes from its run dir."""
        import submitit

        return submitit.helpers.DelayedSubmission(StageJob(list(self.argv), dict(self.env)))


def _executor(cluster: ClusterConfig, folder: Path, stage: str, kind: str) -> Any:
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster.executor)
    res = cluster.resources(stage, kind)
    params = {RESOURCE_KEYS[k]: v for k, v in res.items()}
    params.setdefault("timeout_min", 60)
    executor.update_parameters(name=f"hmsa-{stage}", **params)
    return executor


def _stage_run(stage: str, run_dir: Path, table_tags: dict[str, str]) -> dict[str, str]:
    """Create (or re-use, after an interrupted attempt) the stage's MLflow child run."""
    if os.environ.get("HMSA_TRACKING", "1") == "0":
        return {}
    exp_name = os.environ.get(tracking.ENV_EXPERIMENT, tracking.DEFAULT_EXPERIMENT)
    exp_id = tracking.ensure_experiment(exp_name)
    record = run_dir / "mlflow_run.json"
    run_id = ""
    if record.exists():
        from hmsa.io import read_json

        previous = read_json(record)
        status = tracking._client().get_run(previous["run_id"]).info.status
        # An unfinished run is continued (resume after a crash); a finished one is not reopened.
        if status != "FINISHED":
            run_id = previous["run_id"]
    tags = {"hmsa.git_commit": tracking.git_commit(), **table_tags}
    if not run_id:
        invocation = os.environ.get(tracking.ENV_INVOCATION, "")
        parent = tracking.get_or_create_parent(invocation, exp_id, {}) if invocation else None
        run_id = tracking.create_stage_run(stage, exp_id, parent, tags)
        atomic_write_json(record, {"run_id": run_id, "experiment_id": exp_id})
    return {tracking.ENV_RUN_ID: run_id, "MLFLOW_EXPERIMENT_ID": exp_id}


def submit(stage: str, kind: str, run_dir: Path, cluster_file: Path, argv: list[str],
           tags: dict[str, str] | None = None) -> int:
    """Submit ``hmsa <argv>`` as stage ``stage`` and wait; the job's output is copied to ours."""
    cluster = load_cluster(cluster_file)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith(("HMSA_", "MLFLOW_"))}
    env.update(_stage_run(stage, run_dir, tags or {}))
    executor = _executor(cluster, run_dir / "submitit", stage, kind)
    job = executor.submit(StageJob(list(argv), env))
    atomic_write_json(run_dir / "job.json", {"job_id": str(job.job_id), "executor": cluster.executor,
                                             "stage": stage, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                             "argv": list(argv)})
    log.info("stage %s: submitted job %s (%s)", stage, job.job_id, cluster.executor)
    ok = True
    try:
        job.results()  # one result per task (rank)
    except Exception as exc:  # submitit wraps the job's exception; report it in one place
        ok = False
        print(f"hmsa submit: stage {stage} failed in job {job.job_id}: {str(exc).strip()[-2000:]}",
              file=sys.stderr)
    finally:
        _echo(job)
    if ok and env.get(tracking.ENV_RUN_ID):
        tracking.finish_run(env[tracking.ENV_RUN_ID], "FINISHED")
    elif env.get(tracking.ENV_RUN_ID):
        tracking.finish_run(env[tracking.ENV_RUN_ID], "FAILED")
    return 0 if ok else 1


def _echo(job: Any) -> None:
    """Put the job's own log into the Snakemake rule's log."""
    for stream, reader in ((sys.stdout, job.stdout), (sys.stderr, job.stderr)):
        try:
            text = reader()
        except Exception:  # noqa: BLE001 - a missing log file must not hide the job's status
            text = None
        if text:
            stream.write(text if text.endswith("\n") else text + "\n")
            stream.flush()
