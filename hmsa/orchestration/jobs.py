"""The job record of a stage (``RUN_DIR/job.json``) and re-attaching to it.

Snakemake re-runs a stage whose head-node process died while its job still ran (snakemake#3438);
submitting again would start a second job writing the same run dir. So every submission is recorded
(job id, executor, command, all earlier ids), and a new ``hmsa submit`` first asks the scheduler:
a pending / running / requeued job is re-attached, a job that finished successfully is collected,
and only a failed, cancelled or vanished one is replaced.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from hmsa.errors import HmsaError
from hmsa.io import atomic_write_json, read_json

log = logging.getLogger("hmsa.launch")

RECORD = "job.json"
# squeue states of a job that is still alive (will run, is running, or is being requeued).
LIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
               "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


class SchedulerError(HmsaError, RuntimeError):
    """The scheduler could not be asked about a recorded job: never submit blindly then."""


def read_record(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RECORD
    return read_json(path) if path.exists() else None


def record(run_dir: Path, job: Any, executor: str, stage: str, argv: list[str],
           previous: dict[str, Any] | None) -> None:
    history = list((previous or {}).get("history", [])) + [str(job.job_id)]
    atomic_write_json(Path(run_dir) / RECORD, {
        "job_id": str(job.job_id), "executor": executor, "stage": stage, "argv": list(argv),
        "tasks": job.num_tasks, "folder": str(Path(run_dir) / "submitit" / "%j"),
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "history": history, "outcome": "submitted"})


def mark_done(run_dir: Path, ok: bool) -> None:
    rec = read_record(run_dir)
    if rec is not None:
        rec["outcome"] = "succeeded" if ok else "failed"
        atomic_write_json(Path(run_dir) / RECORD, rec)


def slurm_state(job_id: str, name: str) -> str | None:
    """The job's state in SLURM's queue, or None when SLURM no longer knows a job of that id *and* name
    (a wiped StateSaveLocation restarts ids at 1: an id alone could point at someone else's job)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T|%j"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SchedulerError(f"squeue failed for job {job_id}: {exc}") from exc
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:
            return None
        raise SchedulerError(f"squeue -j {job_id}: {out.stderr.strip() or out.returncode}")
    for line in out.stdout.splitlines():
        state, _, jname = line.strip().partition("|")
        if jname == name:
            return state
    return None


def _succeeded(folder: str, job_id: str) -> bool:
    """True when task 0 of the job left a success result (submitit's ``<id>_0_result.pkl``)."""
    from submitit.core.utils import pickle_load

    path = Path(folder.replace("%j", job_id)) / f"{job_id}_0_result.pkl"
    try:
        return path.exists() and pickle_load(path)[0] == "success"
    except Exception:  # noqa: BLE001 - an unreadable result is not a success
        return False


def _cancel(rec: dict[str, Any]) -> None:
    if rec["executor"] == "slurm":
        subprocess.run(["scancel", rec["job_id"]], capture_output=True, timeout=60)
    else:
        _kill_local(rec["job_id"])
    log.warning("cancelled job %s of stage %s (its command changed)", rec["job_id"], rec["stage"])


def _kill_local(pid_text: str) -> None:
    """Stop a local-executor job left running by a killed ``hmsa submit`` (its id is the pid)."""
    import psutil

    try:
        proc = psutil.Process(int(pid_text))
        procs = [proc, *proc.children(recursive=True)]
    except (ValueError, psutil.Error):
        return
    if "submitit" not in " ".join(proc.cmdline()):
        return  # the pid was reused by an unrelated process
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)
    log.warning("stopped local job %s left running by an earlier attempt", pid_text)


def keep_outputs(run_dir: Path, job_id: str, outputs: list[Path]) -> None:
    """Hard-link (or copy) a finished job's outputs to ``RUN_DIR/collected/<job id>/``."""
    import shutil

    keep = Path(run_dir) / "collected" / job_id
    keep.mkdir(parents=True, exist_ok=True)
    kept = {}
    for i, path in enumerate(outputs):
        if not path.is_file():
            return  # not every output is a file: nothing to collect later, the stage simply re-runs
        dest = keep / f"{i}-{path.name}"
        dest.unlink(missing_ok=True)
        try:
            os.link(path, dest)
        except OSError:  # another file system: copy
            shutil.copy2(path, dest)
        kept[str(path)] = dest.name
    atomic_write_json(keep / "outputs.json", kept)


def restore_outputs(run_dir: Path, job_id: str, outputs: list[Path]) -> bool:
    """Put back the outputs a job kept; False when it did not keep every one of them."""
    keep = Path(run_dir) / "collected" / job_id
    kept = read_json(keep / "outputs.json") if (keep / "outputs.json").exists() else {}
    if not outputs or any(str(p) not in kept for p in outputs):
        return False
    for path in outputs:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.restore")
            tmp.unlink(missing_ok=True)
            os.link(keep / kept[str(path)], tmp)
            os.replace(tmp, path)
    return True


def attach(rec: dict[str, Any], executor: str, argv: list[str], expect: list[Path],
           run_dir: Path) -> Any | None:
    """A submitit job handle for the recorded job when it is alive, or finished successfully with every
    ``expect`` output kept (none given: never collected; outputs deleted since are put back); else
    None (submit anew).

    A live job whose command differs from ``argv`` (the stage's config changed) is cancelled first."""
    if rec.get("executor") != "slurm":
        # submitit cannot re-attach to a local job from another process: stop it, the stage resumes
        # from its checkpoint in the new job.
        if rec.get("job_id"):
            _kill_local(rec["job_id"])
        return None
    name = f"hmsa-{rec['stage']}"
    state = slurm_state(rec["job_id"], name)
    live = state in LIVE_STATES
    if executor != "slurm" or rec.get("argv") != list(argv):
        if live:  # another command, or the stage moved off SLURM: never two live jobs
            _cancel(rec)
        return None
    expect = [Path(p).resolve() for p in expect]
    collect = not live and _succeeded(rec["folder"], rec["job_id"]) and \
        restore_outputs(run_dir, rec["job_id"], expect)
    if not live and not collect:
        log.info("job %s of %s is %s: submitting anew", rec["job_id"], rec["stage"], state or "gone")
        return None
    import submitit

    return submitit.SlurmJob(folder=rec["folder"], job_id=rec["job_id"], tasks=tuple(range(rec.get("tasks", 1))))
