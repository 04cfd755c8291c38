"""MLflow tracking: one parent run per pipeline invocation, one child run per stage, rank 0 only.

Runs are created on the *submitting* side (``hmsa submit``) and their ids handed to the job, so a
requeued or resumed job continues in the same run and concurrent jobs never race on
``set_experiment`` (mlflow#10334). The DAG never reads MLflow: metrics JSON files are the truth.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV_RUN_ID = "HMSA_MLFLOW_RUN_ID"
ENV_PARENT_RUN_ID = "HMSA_MLFLOW_PARENT_RUN_ID"
ENV_INVOCATION = "HMSA_INVOCATION_ID"
ENV_EXPERIMENT = "HMSA_MLFLOW_EXPERIMENT"
DEFAULT_EXPERIMENT = "hmsa"


def _client() -> Any:
    from mlflow.tracking import MlflowClient  # lazy: mlflow takes seconds to import

    return MlflowClient()


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    """Serialise run creation across concurrent ``hmsa submit`` processes on one head node."""
    lock_dir = Path(os.environ.get("HMSA_LOCK_DIR", ".hmsa/locks"))
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def git_commit(cwd: Path | None = None) -> str:
    """The current commit (with ``-dirty`` when the work tree differs), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ensure_experiment(name: str) -> str:
    """Create the experiment once (under a lock) and return its id."""
    with _file_lock("experiment"):
        client = _client()
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(name)


def get_or_create_parent(invocation: str, experiment_id: str, tags: dict[str, str]) -> str:
    """The parent run of one pipeline invocation; created by whichever stage submits first."""
    with _file_lock("parent"):
        client = _client()
        found = client.search_runs([experiment_id], f"tags.`hmsa.invocation` = '{invocation}'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(experiment_id, run_name=f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
                                tags={"hmsa.invocation": invocation, "hmsa.kind": "pipeline", **tags})
        # Lets the Snakefile's onsuccess/onerror know there is a parent run to close, without
        # importing MLflow when nothing ran.
        marker = Path(".hmsa/invocations") / invocation
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(run.info.run_id)
        return run.info.run_id


def create_stage_run(stage: str, experiment_id: str, parent_id: str | None, tags: dict[str, str]) -> str:
    all_tags = {"hmsa.stage": stage, "hmsa.kind": "stage", **tags}
    if parent_id:
        all_tags["mlflow.parentRunId"] = parent_id
    return _client().create_run(experiment_id, run_name=stage, tags=all_tags).info.run_id


def finish_run(run_id: str, status: str = "FINISHED") -> None:
    _client().set_terminated(run_id, status=status)


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class StageTracker:
    """Logs to one MLflow run from rank 0; every method is a no-op on other ranks or when disabled."""

    def __init__(self, run_id: str | None = None, enabled: bool = True) -> None:
        self.enabled = enabled and is_rank_zero()
        self.run_id = run_id
        # A run this object created (a standalone `hmsa train`) is also ended by it; a stage run
        # belongs to `hmsa submit`, which ends it when the job is done.
        self.owned = run_id is None
        self._client: Any = None
        if not self.enabled:
            return
        self._client = _client()
        if self.run_id is None:
            name = os.environ.get(ENV_EXPERIMENT, DEFAULT_EXPERIMENT)
            exp = ensure_experiment(name)
            self.run_id = self._client.create_run(exp).info.run_id
        else:
            # Re-open a run that a previous (killed or requeued) attempt left behind.
            self._client.update_run(self.run_id, status="RUNNING")

    @classmethod
    def from_env(cls) -> StageTracker:
        return cls(os.environ.get(ENV_RUN_ID) or None, enabled=os.environ.get("HMSA_TRACKING", "1") != "0")

    def log_params(self, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Param

        existing = self._client.get_run(self.run_id).data.params
        # Params are immutable in MLflow: a resumed run only adds what is missing.
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(new), 100):
            self._client.log_batch(self.run_id, params=new[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        if not self.enabled:
            return
        for k, v in tags.items():
            self._client.set_tag(self.run_id, k, str(v))

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        if self.enabled:
            self._client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled and Path(path).exists():
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self._client.set_terminated(self.run_id, status=status)

    def close(self) -> None:
        """End the run if this tracker created it."""
        if self.owned:
            self.finish()
