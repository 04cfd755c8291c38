"""MLflow tracking: one parent run per pipeline invocation, one child run per stage, rank 0 only.

Runs are created on the *submitting* side (``hmsa submit``) and their ids handed to the job, so a
requeued or resumed job continues in the same run and concurrent jobs never race on
``set_experiment`` (mlflow#10334). The DAG never reads MLflow: metrics JSON files are the truth.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from hmsa import tracking_buffer as wal
from hmsa.io import file_lock

log = logging.getLogger("hmsa.tracking")

ENV_RUN_ID = "HMSA_MLFLOW_RUN_ID"
ENV_PARENT_RUN_ID = "HMSA_MLFLOW_PARENT_RUN_ID"
ENV_INVOCATION = "HMSA_INVOCATION_ID"
ENV_EXPERIMENT = "HMSA_MLFLOW_EXPERIMENT"
ENV_RUN_DIR = "HMSA_RUN_DIR"
DEFAULT_EXPERIMENT = "hmsa"


# MLflow's own HTTP retries (7, exponential backoff, 120 s timeout) would stall a stage for minutes per
# call while a server is down; our write-ahead log retries instead, so fail fast unless the user chose.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def _client() -> Any:
    from mlflow.tracking import MlflowClient  # lazy: mlflow takes seconds to import

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return MlflowClient()



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
    with file_lock("experiment"):
        client = _client()
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(name)


def get_or_create_parent(invocation: str, experiment_id: str, tags: dict[str, str]) -> str:
    """The parent run of one pipeline invocation; created by whichever stage submits first."""
    with file_lock("parent"):
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


def finish_run(run_id: str, status: str = "FINISHED", run_dir: Path | None = None) -> bool:
    """End a stage run after sending what its job left in the run dir's log; never raises for an
    outage (the end is then logged too and goes out with ``hmsa track --sync``). True if all was sent."""
    tracker = StageTracker(run_id, buffer=buffer_dir(run_dir), reopen=False)
    tracker.finish(status)  # one attempt: the job itself already waited for the server
    return not tracker.enabled or wal.pending(tracker.wal) == 0


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def buffer_dir(run_dir: Path | None = None) -> Path:
    """Where a run's write-ahead log lives: ``<run dir>/mlflow-wal`` (the job gets ``HMSA_RUN_DIR``),
    else ``.hmsa/tracking`` (standalone commands, the parent run)."""
    run_dir = run_dir or os.environ.get(ENV_RUN_DIR)
    if run_dir:
        return Path(run_dir).resolve() / "mlflow-wal"
    return Path(os.environ.get("HMSA_TRACKING_BUFFER", ".hmsa/tracking")).resolve()


def _seconds(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError as exc:
        raise ValueError(f"environment variable {name}: expected seconds, got {os.environ[name]!r}") from exc


def slurm_job_id() -> str:
    return os.environ.get("HMSA_SLURM_JOB_ID") or os.environ.get("SLURM_JOB_ID", "")


def data_version(path: Path | str) -> str:
    """DVC md5 of an input (``hmsa.versioning``), or "" when unknown."""
    try:
        from hmsa.versioning import data_version as _version
    except ImportError:
        return ""
    try:
        return str(_version(Path(path)))
    except Exception as exc:  # noqa: BLE001 - a tag must never fail a stage
        log.warning("no data version for %s: %s", path, exc)
        return ""


class StageTracker:
    """Logs to one MLflow run from rank 0; every method is a no-op on other ranks or when disabled.

    Nothing here raises because the tracking server is down: each call is written to the run's
    write-ahead log first (``tracking_buffer``) and sent when the server answers; a failed send is
    retried on a later call (at most every ``HMSA_TRACKING_RETRY_SECONDS``, default 30) and at
    ``close()``, which waits up to ``HMSA_TRACKING_FINISH_WAIT_SECONDS`` (default 30) for the server.
    """

    def __init__(self, run_id: str | None = None, enabled: bool = True, buffer: Path | None = None,
                 reopen: bool = True) -> None:
        self.enabled = enabled and is_rank_zero()
        self.run_id = run_id
        # A run this object created (a standalone `hmsa train`) is also ended by it; a stage run
        # belongs to `hmsa submit`, which ends it when the job is done.
        self.owned = run_id is None
        self._client: Any = None
        self._retry_at = 0.0
        self._retry_s = _seconds("HMSA_TRACKING_RETRY_SECONDS", 30)
        if not self.enabled:
            return
        self._client = _client()
        if self.run_id is None and not self._create_run():
            return
        self.wal = wal.wal_path(buffer or buffer_dir(), str(self.run_id))
        if reopen and not self.owned:
            # Re-open a run that a previous (killed or requeued) attempt left behind.
            self._record({"op": "status", "status": "RUNNING"})
            if slurm_job_id():
                self._record({"op": "tags", "t": {"hmsa.slurm_job_id": slurm_job_id()}})

    def _create_run(self) -> bool:
        try:
            exp = ensure_experiment(os.environ.get(ENV_EXPERIMENT, DEFAULT_EXPERIMENT))
            self.run_id = self._client.create_run(exp).info.run_id
            return True
        except Exception as exc:  # noqa: BLE001 - without a run id there is nothing to buffer for
            log.warning("MLflow unreachable, this command is not tracked: %s", wal._short(exc))
            self.enabled = False
            return False

    @classmethod
    def from_env(cls) -> StageTracker:
        return cls(os.environ.get(ENV_RUN_ID) or None, enabled=os.environ.get("HMSA_TRACKING", "1") != "0")

    def _record(self, op: dict[str, Any]) -> None:
        wal.append(self.wal, op)
        if time.monotonic() >= self._retry_at:
            self.flush()

    def flush(self, wait: float = 0.0) -> bool:
        """Send what is pending; with ``wait`` > 0 keep trying that long. True when nothing is left."""
        if not self.enabled:
            return True
        deadline = time.monotonic() + wait
        while True:
            if wal.flush(self.wal, self._client, str(self.run_id)):
                self._retry_at = 0.0
                return True
            self._retry_at = time.monotonic() + self._retry_s
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(5.0, left))

    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            self._record({"op": "params", "p": {k: str(v)[:6000] for k, v in params.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        now = int(time.time() * 1000)
        self._record({"op": "metrics", "m": [[k, float(v), now, step or 0] for k, v in metrics.items()]})

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            self._record({"op": "tags", "t": {k: str(v) for k, v in tags.items()}})

    def log_table(self, data: dict[str, list], artifact_file: str) -> None:
        if self.enabled:
            self._record({"op": "table", "data": data, "file": artifact_file})

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self._record({"op": "text", "text": text, "file": artifact_file})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """A file or a whole directory; sent from where it lies, so it must stay there until sent."""
        if self.enabled and Path(path).exists():
            self._record({"op": "artifact", "path": str(Path(path).resolve()), "dir": artifact_path})

    def log_provenance(self, config_yaml: str, config_hash: str, inputs: list[Path]) -> None:
        """The tags that tie a stage run to its code, config, data and job, and the resolved config."""
        if not self.enabled:
            return
        versions = [v for v in (data_version(p) for p in inputs) if v]
        self.set_tags({"hmsa.git_commit": git_commit(), "hmsa.config_hash": config_hash,
                       "hmsa.data_version": ",".join(versions), "hmsa.slurm_job_id": slurm_job_id()})
        self.log_text(config_yaml, "config.yaml")

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self._record({"op": "terminate", "status": status, "end_time": int(time.time() * 1000)})

    def close(self) -> None:
        """End the run if this tracker created it; wait a little for the server if anything is pending."""
        if not self.enabled:
            return
        if self.owned:
            self.finish()
        if not self.flush(wait=_seconds("HMSA_TRACKING_FINISH_WAIT_SECONDS", 30)):
            log.warning("MLflow still unreachable: run %s continues from %s (hmsa track --sync sends it)",
                        self.run_id, self.wal)


def sync(roots: list[Path]) -> dict[str, bool]:
    """Send every pending log in the run dirs under ``roots`` and in ``.hmsa/tracking``;
    run id -> True if it is now complete."""
    out: dict[str, bool] = {}
    paths = [p for r in roots for p in sorted(Path(r).glob("**/mlflow-wal/*.jsonl"))]
    default = Path(os.environ.get("HMSA_TRACKING_BUFFER", ".hmsa/tracking"))
    paths += sorted(default.glob("*.jsonl"))
    for path in paths:
        if wal.pending(path) > 0:
            out[path.stem] = StageTracker(path.stem, buffer=path.parent, reopen=False).flush()
    return out


def _stage_tracker() -> StageTracker | None:
    """The job's stage run (``hmsa submit`` hands its id over), or None for a standalone command."""
    run_id = os.environ.get(ENV_RUN_ID)
    if not run_id or os.environ.get("HMSA_TRACKING", "1") == "0" or not is_rank_zero():
        return None
    return StageTracker(run_id, reopen=False)


def stage_provenance(cfg: Any, inputs: list[Path | str]) -> None:
    """Tag the stage run with git commit, config hash, data version of ``inputs``, SLURM job id, and log
    the resolved config. Called by the CLI so every stage kind gets the same tags."""
    tracker = _stage_tracker()
    if tracker is None:
        return
    import yaml

    from hmsa import config

    text = yaml.safe_dump(config.to_dict(cfg), sort_keys=False)
    tracker.log_provenance(text, config.config_hash(cfg), [Path(p) for p in inputs if str(p)])


def stage_artifacts(artifacts: dict[str, Path]) -> None:
    """Log files or folders (e.g. the attention figures) to the stage run: artifact dir -> local path."""
    tracker = _stage_tracker()
    if tracker is None:
        return
    for where, path in artifacts.items():
        tracker.log_artifact(Path(path), where)
