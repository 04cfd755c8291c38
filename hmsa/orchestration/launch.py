"""The only path from the DAG to compute: ``hmsa submit`` runs one stage through submitit.

A ``StageJob`` is a picklable job object (like dinov2's): ``__call__`` runs an ``hmsa`` subcommand
inside the job (``hmsa.commands.run``, importing the heavy code lazily), ``checkpoint()`` asks a running
training to save at the next iteration boundary and returns a resubmission of itself — training resumes
from its run dir by default, so a requeue needs no special path. The cluster facts (executor, partition,
GPUs, time) come from ``configs/cluster/*.yaml`` (``orchestration.cluster``), never from code.

``submit`` records the job in ``RUN_DIR/job.json``. Run again (after the head-node Snakemake or
``hmsa submit`` itself was killed), it re-attaches to a live SLURM job, collects a finished one, and
submits only when there is no live or successful job: never two live jobs for one stage.

Each task runs torch/OpenMP on the CPUs it was given (``SLURM_CPUS_PER_TASK``, else the cluster file's
``cpus_per_task``), not on the ``OMP_NUM_THREADS`` it inherited from Snakemake.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hmsa import tracking
from hmsa.errors import one_line
from hmsa.io import atomic_write_json, file_lock, read_json
from hmsa.orchestration import jobs
from hmsa.orchestration.cluster import RESOURCE_KEYS, ClusterConfig, ClusterConfigError, load_cluster
from hmsa.tracking.parent import check_invocation
from hmsa.tracking.sender import Sender, defer_stage_run, job_env

__all__ = ["ClusterConfigError", "StageJob", "load_cluster", "submit"]

log = logging.getLogger("hmsa.launch")

# How long ``checkpoint()`` waits for the training to reach an iteration boundary and save. SLURM
# signals ``--signal`` seconds before the limit (submitit: 90 s), so this must stay well below that.
SAVE_TIMEOUT_S = float(os.environ.get("HMSA_PREEMPT_SAVE_TIMEOUT", "60"))
ENV_THREADS = "HMSA_NUM_THREADS"
# What Snakemake sets to a rule's threads; children (data-loader workers, BLAS) read them too.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@dataclass
class StageJob:
    """Runs ``hmsa <argv>`` on every task of the job."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    run_dir: str = ""
    expect: list[str] = field(default_factory=list)  # the stage's declared outputs
    cpus_per_task: int = 0  # the cluster file's, for executors that do not say (SLURM does)

    def __post_init__(self) -> None:
        self._worker: threading.Thread | None = None

    def __call__(self) -> int:
        os.environ.update(self.env)
        use_allocated_threads(self.cpus_per_task)  # before anything loads OpenMP
        import submitit

        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT for torch.distributed, the same on every
            # node: the address is the first host of SLURM_JOB_NODELIST, the port is drawn from the job id
            # (so a requeued job meets again on it), ranks are SLURM_PROCID / SLURM_LOCALID.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        # Named as what it is: a SLURM job id only under SLURM; the local executor's id is a process id.
        os.environ.pop(tracking.ENV_SLURM_JOB, None)
        os.environ.pop(tracking.ENV_LOCAL_JOB, None)
        job_var = tracking.ENV_SLURM_JOB if env.cluster == "slurm" else tracking.ENV_LOCAL_JOB
        os.environ[job_var] = str(env.job_id)
        # The stage runs in a worker thread so that the main thread stays free for submitit's signal
        # handler: on timeout/preemption ``checkpoint()`` can then wait for the training to save.
        outcome: dict[str, Any] = {}
        self._worker = threading.Thread(target=self._run, args=(outcome,), name="hmsa-stage")
        self._worker.start()
        while self._worker.is_alive():
            self._worker.join(timeout=1.0)
        error = outcome.get("error")
        if error is not None and type(error).__name__ == "Preempted":
            # Every rank stops at the same iteration, but only rank 0's signal handler requeues the
            # job. Returning now would leave an error result that the submitting side reads as a
            # failure: wait for the requeue to end this task instead.
            time.sleep(10 * SAVE_TIMEOUT_S)
        if error is not None:
            raise error
        if env.global_rank == 0 and self.run_dir and self.expect:
            # Kept beside the run so that a later `hmsa submit` can collect this job even after
            # Snakemake deleted the outputs of the rule it re-runs (head node died meanwhile).
            jobs.keep_outputs(Path(self.run_dir), str(env.job_id), [Path(p) for p in self.expect])
        return 0

    def _run(self, outcome: dict[str, Any]) -> None:
        from hmsa.commands import run  # `hmsa <argv>` as the CLI runs it, without the CLI (which imports us)

        try:
            code = run(self.argv)
            if code:
                raise RuntimeError(f"hmsa {' '.join(self.argv)} exited with status {code}")
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            outcome["error"] = exc

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit (rank 0) on timeout/preemption: save now, then requeue this job."""
        import submitit

        if self.argv[:1] == ["train"] and self._worker is not None and self._worker.is_alive():
            from hmsa.training import loop

            loop.STOP_REQUESTED.set()
            self._worker.join(timeout=SAVE_TIMEOUT_S)
            state = "saved" if not self._worker.is_alive() else "did not reach a boundary in time"
            print(f"hmsa: preempted; training {state}", file=sys.stderr, flush=True)
        return submitit.helpers.DelayedSubmission(StageJob(list(self.argv), dict(self.env), self.run_dir,
                                                           list(self.expect), self.cpus_per_task))


def allocated_threads(cpus_per_task: int) -> tuple[int, str] | None:
    """How many threads one task of this job may run, and who said so: SLURM's allocation, else the
    cluster file's ``cpus_per_task`` (the local executor has no allocation of its own)."""
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm), "SLURM_CPUS_PER_TASK"
    if cpus_per_task > 0:
        return cpus_per_task, "cpus_per_task of the cluster file"
    return None


def use_allocated_threads(cpus_per_task: int) -> None:
    """Set every thread pool of this task to its allocation: the OpenMP/BLAS variables (read when torch
    loads, and by child processes) and torch itself if loaded. Overrides what the job inherited from
    the submitting side (Snakemake sets OMP_NUM_THREADS=1 for a rule that declares no threads)."""
    found = allocated_threads(cpus_per_task)
    if found is None:
        print(f"hmsa: job threads: no allocation known, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
              flush=True)
        return
    n, source = found
    inherited = os.environ.get("OMP_NUM_THREADS", "unset")
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    os.environ[ENV_THREADS] = str(n)  # applied again where torch is set up (hmsa.training.distributed)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    print(f"hmsa: job threads: {n} ({source}; inherited OMP_NUM_THREADS={inherited})", flush=True)


def _executor(cluster: ClusterConfig, folder: Path, stage: str, kind: str) -> Any:
    import submitit

    res = dict(cluster.resources(stage, kind))
    # How many timeouts a job may requeue after is a constructor argument in submitit, not a parameter.
    max_timeouts = int(res.pop("max_requeue", 3))
    executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster.executor,
                                     slurm_max_num_timeout=max_timeouts)
    params = {RESOURCE_KEYS[k]: v for k, v in res.items()}
    params.setdefault("timeout_min", 60)
    executor.update_parameters(name=f"hmsa-{stage}", **params)
    return executor


def _stage_run(stage: str, kind: str, run_dir: Path, table_tags: dict[str, str]) -> dict[str, str]:
    """The job's environment for the stage's MLflow child run: the run recorded in ``mlflow_run.json``
    while it is unfinished (a resumed or re-attached stage continues it), else a new one. Nothing here
    talks to the tracking server: a new run starts under a local id whose write-ahead log begins with
    the op that creates it (``tracking.sender.defer_stage_run``), sent by ``tracking.sender.Sender``."""
    if os.environ.get("HMSA_TRACKING", "1") == "0":
        return {}
    if os.environ.get(tracking.ENV_INVOCATION):  # bad input, not an outage: refused before anything runs
        check_invocation(os.environ[tracking.ENV_INVOCATION])
    rows = f" It fills the paper's table rows {table_tags['hmsa.paper_rows']}." \
        if table_tags.get("hmsa.paper_rows") else ""
    note = (f"Stage `{stage}` ({kind}) of the pipeline, run by `hmsa submit`.{rows}"
            + (" Each evaluation setting is a run nested under this one." if kind == "evaluate" else ""))
    record = run_dir / "mlflow_run.json"
    previous = read_json(record) if record.exists() else None
    # A finished run is not reopened: running a finished stage again (new params, deleted outputs) is a
    # new run. ``status`` is written by ``Sender.finish``; a record without one predates it (continue).
    if previous is not None and previous.get("status", "RUNNING") == "RUNNING":
        run_id, exp_id = str(previous["run_id"]), str(previous.get("experiment_id") or "")
    else:
        run_id, exp_id = defer_stage_run(stage, run_dir, dict(table_tags), note), ""
        atomic_write_json(record, {"run_id": run_id, "experiment_id": "", "status": "RUNNING"})
    # HMSA_RUN_DIR: where the job keeps the run's tracking log. The stage's name and tags: its nested
    # runs (one per evaluation setting) are named and tagged by them.
    env = {tracking.ENV_RUN_ID: run_id, tracking.ENV_RUN_DIR: str(run_dir.resolve()),
           tracking.ENV_STAGE: stage, tracking.ENV_STAGE_TAGS: json.dumps(table_tags, sort_keys=True),
           **job_env(run_dir)}
    if exp_id:
        env["MLFLOW_EXPERIMENT_ID"] = exp_id
    return env


def _submit_new(cluster: ClusterConfig, stage: str, kind: str, run_dir: Path, argv: list[str],
                env: dict[str, str], previous: dict[str, Any] | None, expect: list[Path]) -> Any:
    import submitit

    executor = _executor(cluster, run_dir / "submitit", stage, kind)
    cpus = int(cluster.resources(stage, kind).get("cpus_per_task", 0))
    # Inside a SLURM allocation (e.g. Snakemake started under salloc) the job's SLURM_* variables
    # would leak into the new job's sbatch and confuse it.
    site_conf = os.environ.get("SLURM_CONF")
    with submitit.helpers.clean_env():
        if site_conf:  # where the cluster's slurm.conf lives is not job state: keep it
            os.environ["SLURM_CONF"] = site_conf
        job = executor.submit(StageJob(list(argv), env, str(run_dir.resolve()),
                                       [str(p.resolve()) for p in expect], cpus))
    jobs.record(run_dir, job, cluster.executor, stage, argv, previous)
    log.info("stage %s: submitted job %s (%s)", stage, job.job_id, cluster.executor)
    return job


def _attach_or_submit(cluster: ClusterConfig, stage: str, kind: str, run_dir: Path, argv: list[str],
                      env: dict[str, str], expect: list[Path]) -> Any:
    previous = jobs.read_record(run_dir)
    if previous is not None:
        try:
            job = jobs.attach(previous, cluster.executor, argv, expect, run_dir)
        except jobs.SchedulerError as exc:  # never submit blindly: the recorded job may still run
            raise jobs.SchedulerError(
                f"{run_dir / jobs.RECORD}: job {previous.get('job_id')} of stage {stage} is recorded, but "
                f"the scheduler cannot tell whether it still runs ({one_line(str(exc))}); retry when SLURM "
                f"answers, or delete the record if that job is gone for good") from exc
        if job is not None:
            print(f"hmsa submit: stage {stage}: re-attached to job {job.job_id}", file=sys.stderr, flush=True)
            return job
    return _submit_new(cluster, stage, kind, run_dir, argv, env, previous, expect)


def submit(stage: str, kind: str, run_dir: Path, cluster_file: Path, argv: list[str],
           tags: dict[str, str] | None = None, expect: list[Path] | None = None) -> int:
    """Run ``hmsa <argv>`` as stage ``stage`` (re-attaching to its live job if any) and wait.

    ``expect``: the stage's outputs. A job that already finished is collected only while they all
    exist (Snakemake deletes a re-run rule's outputs first; the job is then run again, which resumes
    from its final checkpoint)."""
    cluster = load_cluster(cluster_file)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k.startswith(("HMSA_", "MLFLOW_"))}
    env.update(_stage_run(stage, kind, run_dir, tags or {}))
    # Creates the stage run and sends what the job logs, while the job runs (MLflow loads meanwhile).
    sender = Sender(run_dir, env[tracking.ENV_RUN_ID], env.get("MLFLOW_EXPERIMENT_ID", "")).start() \
        if env.get(tracking.ENV_RUN_ID) else None
    with file_lock(f"submit-{stage}"):  # two `hmsa submit` of one stage never both submit
        job = _attach_or_submit(cluster, stage, kind, run_dir, argv, env, list(expect or []))
    ok = True
    try:
        job = _wait(job, stage, cluster.executor, run_dir / "submitit" / "%j")
    except Exception as exc:  # submitit wraps the job's exception; report it in one place
        ok = False
        print(f"hmsa submit: stage {stage} failed in job {job.job_id}: {str(exc).strip()[-2000:]}",
              file=sys.stderr)
    finally:
        _echo(job)
    jobs.mark_done(run_dir, ok)
    if sender is not None:
        sender.finish("FINISHED" if ok else "FAILED")
    return 0 if ok else 1


def _wait(job: Any, stage: str, executor: str, folder: Path) -> Any:
    """Wait for every task's result (``job.results()``); the job handle waited on last.

    When a node fails under a SLURM job, SLURM requeues it, but for a while sacct (which submitit
    reads) shows the attempt that ended, NODE_FAIL, and submitit takes it for the job's end: the job
    would be reported failed while it runs again. A job that ended without a result (not one whose
    stage raised) and that squeue still holds is waited for again."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    while True:
        try:
            job.results()  # one result per task (rank)
            return job
        except UncompletedJobError as exc:
            if executor != "slurm" or isinstance(exc, FailedJobError) or \
                    _state_after_completing(str(job.job_id), f"hmsa-{stage}") not in jobs.LIVE_STATES:
                raise
        print(f"hmsa submit: stage {stage}: job {job.job_id} was requeued by SLURM; waiting for it again",
              file=sys.stderr, flush=True)
        import submitit

        time.sleep(5)
        job.watcher.clear()  # submitit keeps the ended attempt's state as final
        job = submitit.SlurmJob(folder=str(folder), job_id=str(job.job_id), tasks=tuple(range(job.num_tasks)))


def _state_after_completing(job_id: str, name: str) -> str | None:
    """The job's squeue state once it has left COMPLETING, which an ended job (cancelled, failed) and a
    job being requeued both pass through: PENDING or RUNNING afterwards means requeued."""
    state = jobs.slurm_state(job_id, name)
    while state == "COMPLETING":
        time.sleep(2)
        state = jobs.slurm_state(job_id, name)
    return state


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
