"""What ties an MLflow run to the code, data and job that made it: the tags, computed without MLflow.

Kept apart from the trackers (``hmsa.tracking``) so that these facts can be read (and tested) without importing
MLflow, and so that each is computed in one place: the git tags when a run is created, the data
versions when a stage starts, the job id where the job runs.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

log = logging.getLogger("hmsa.tracking")

UNVERSIONED = "unversioned"
# Set by `hmsa submit`'s job (hmsa.orchestration.launch) from submitit's own environment: which executor runs it.
ENV_SLURM_JOB = "HMSA_SLURM_JOB_ID"
ENV_LOCAL_JOB = "HMSA_LOCAL_JOB_ID"


def git_commit(cwd: Path | None = None) -> str:
    """The commit of the code that runs (the checkout holding this package, not the working
    directory), with ``-dirty`` when its work tree differs; ``unknown`` outside git."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_tags(command: str = "") -> dict[str, str]:
    """MLflow's own source tags (the UI's Source column links the commit) and ours, which also says
    whether the work tree had uncommitted changes (MLflow's commit tag must be a bare hash)."""
    commit = git_commit()
    tags = {"hmsa.git_commit": commit, "mlflow.source.type": "LOCAL",
            "mlflow.source.name": f"hmsa {command}".strip()}
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit.removesuffix("-dirty")
    return tags


def job_tags() -> dict[str, str]:
    """The job that runs this process, named as what it is: a SLURM job id only for a SLURM job; the
    local executor's id (a process id) as ``hmsa.local_job_id``. {} outside a job."""
    local = os.environ.get(ENV_LOCAL_JOB, "")
    if local:
        return {"hmsa.local_job_id": local}
    slurm = os.environ.get(ENV_SLURM_JOB) or os.environ.get("SLURM_JOB_ID", "")
    return {"hmsa.slurm_job_id": slurm} if slurm else {}


def dataset_tag(root: Path | str) -> str:
    """The dataset's DVC version (``hmsa.orchestration.versioning.dataset_version``), or ``unversioned``."""
    if not str(root):
        return UNVERSIONED
    try:
        from hmsa.orchestration.versioning import dataset_version

        return dataset_version(Path(root)) or UNVERSIONED
    except Exception as exc:  # noqa: BLE001 - a tag must never fail a stage
        log.warning("no data version for %s: %s", root, exc)
        return UNVERSIONED


def file_version(path: Path | str) -> str:
    """DVC md5 of an input file or folder (a model, auto-labels), or "" when not recorded."""
    try:
        from hmsa.orchestration.versioning import data_version

        return str(data_version(Path(path)))
    except Exception as exc:  # noqa: BLE001 - a tag must never fail a stage
        log.warning("no data version for %s: %s", path, exc)
        return ""


def input_tags(dataset_root: Path | str, inputs: list[Path]) -> dict[str, str]:
    """``hmsa.data_version``: the dataset's version; ``hmsa.input_versions``: ``name=md5`` of the other
    recorded inputs (models, auto-labels), so a model's hash is never taken for the data's."""
    others = [f"{Path(p).name}={v}" for p in inputs if str(p) and Path(p) != Path(dataset_root)
              for v in [file_version(p)] if v]
    tags = {"hmsa.data_version": dataset_tag(dataset_root)}
    if others:
        tags["hmsa.input_versions"] = ",".join(others)
    return tags
