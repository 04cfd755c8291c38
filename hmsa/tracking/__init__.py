"""MLflow tracking: one child run per stage (its parent, one per pipeline invocation, is
``hmsa.tracking.parent``), rank 0 only.

A stage's run id is chosen on the *submitting* side (``hmsa submit``) and handed to the job, so a
requeued or resumed job continues in the same run and concurrent jobs never race on
``set_experiment`` (mlflow#10334). The run itself is created, and what the job logs is sent, by the
sender process (``hmsa.tracking.sender``): a job only appends to its write-ahead log. The DAG never
reads MLflow: metrics JSON files are the truth.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hmsa.errors import BadInputError
from hmsa.io import file_lock
from hmsa.tracking import buffer as wal
from hmsa.tracking.location import unpin_artifact_locations
from hmsa.tracking.tags import ENV_LOCAL_JOB, ENV_SLURM_JOB, git_commit, git_tags, input_tags, job_tags

__all__ = ["ENV_LOCAL_JOB", "ENV_SLURM_JOB", "StageTracker", "ensure_experiment", "git_commit", "mlflow_client",
           "stage_provenance"]

log = logging.getLogger("hmsa.tracking")

ENV_RUN_ID = "HMSA_MLFLOW_RUN_ID"
ENV_PARENT_RUN_ID = "HMSA_MLFLOW_PARENT_RUN_ID"
ENV_INVOCATION = "HMSA_INVOCATION_ID"
ENV_EXPERIMENT = "HMSA_MLFLOW_EXPERIMENT"
ENV_RUN_DIR = "HMSA_RUN_DIR"
ENV_STAGE = "HMSA_STAGE"  # the stage's name, handed to its job by `hmsa submit`
ENV_STAGE_TAGS = "HMSA_STAGE_TAGS"  # JSON: the tags `hmsa submit` gave the stage run (children inherit them)
ENV_PIPELINE_CONFIG = "HMSA_PIPELINE_CONFIG"  # the pipeline config (JSON, or a file): the parent's params
# Set by `hmsa submit` for its job: the write-ahead log folder that the submitting side sends to MLflow
# (``hmsa.tracking.sender``). A tracker of a log in it only appends, so the job never imports MLflow.
ENV_SENDER = "HMSA_TRACKING_SENT_FROM"
# The embedded pipeline's experiment: a standalone `hmsa train/evaluate` lands beside the pipeline's runs.
DEFAULT_EXPERIMENT = "hmsa-embedded"
# Without this tag MLflow 3 guesses the experiment's kind and may open it in the GenAI (traces) view.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
NOTE = "mlflow.note.content"


# MLflow's own HTTP retries (7, exponential backoff, 120 s timeout) would stall a stage for minutes per
# call while a server is down; our write-ahead log retries instead, so fail fast unless the user chose.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


_STORES_READY: set[str] = set()  # database stores this process has opened once, under the lock


def mlflow_client() -> Any:
    """The MLflow client, with bounded HTTP retries (a down server costs seconds, not minutes).

    A database store (``sqlite:///mlflow.db``) creates its tables on first use, and two processes doing
    that at once fail in alembic ("expected to match one row ... 0 found"): the sender and a job that
    reads MLflow (the report) may both be first. So the first use of each such store in a process
    happens under a lock; a tracking server does this itself."""
    from mlflow import get_tracking_uri
    from mlflow.tracking import MlflowClient  # lazy: mlflow takes seconds to import

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = str(get_tracking_uri())
    if "://" not in uri or uri.startswith(("http://", "https://", "file://")) or uri in _STORES_READY:
        return MlflowClient()
    with file_lock("mlflow-store"):
        client = MlflowClient()  # opens the store: creates or migrates its tables
    _STORES_READY.add(uri)
    return client



def experiment_name() -> str:
    return os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT


def ensure_experiment(name: str) -> str:
    """Create the experiment once (under a lock), marked as model development; return its id."""
    import mlflow

    with file_lock("experiment"):
        client = mlflow_client()
        exp = client.get_experiment_by_name(name)
        if exp is None:
            exp_id = client.create_experiment(name, tags=EXPERIMENT_KIND)
        else:
            exp_id = exp.experiment_id
            for key, value in EXPERIMENT_KIND.items():  # an experiment made by an older version
                if exp.tags.get(key) != value:
                    client.set_experiment_tag(exp_id, key, value)
        unpin_artifact_locations(mlflow.get_tracking_uri())  # before any run: runs inherit it
        return exp_id


def create_stage_run(stage: str, experiment_id: str, parent_id: str | None, tags: dict[str, str],
                     note: str = "") -> str:
    """A stage's run, tagged with the code it runs (the git tags are set here and nowhere else)."""
    all_tags = {"hmsa.stage": stage, "hmsa.kind": "stage", **git_tags(), **tags}
    if note:
        all_tags[NOTE] = note
    if parent_id:
        all_tags["mlflow.parentRunId"] = parent_id
    return mlflow_client().create_run(experiment_id, run_name=stage, tags=all_tags).info.run_id


# The id a stage run goes by until the tracking server has created it (``sender.defer_stage_run``).
PENDING = wal.PENDING


def resolve_run_id(run_id: str, run_dir: Path | None = None) -> str:
    """The server's id of a run recorded as pending, once created ("pending-..." until then)."""
    if not run_id.startswith(PENDING):
        return run_id
    return wal.resolved_run_id(wal.wal_path(buffer_dir(run_dir), run_id)) or run_id


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
    return default_buffer()


def default_buffer() -> Path:
    """The log of runs that have no run dir: the parent run, standalone commands."""
    return Path(os.environ.get("HMSA_TRACKING_BUFFER", ".hmsa/tracking")).resolve()


def env_seconds(name: str, default: float) -> float:
    """A duration from the environment; a one-line error naming the variable if it is not a number."""
    try:
        return float(os.environ.get(name, default))
    except ValueError as exc:
        raise BadInputError(f"environment variable {name}: expected seconds, got {os.environ[name]!r}") from exc


class StageTracker:
    """Logs to one MLflow run from rank 0; every method is a no-op on other ranks or when disabled.

    Nothing here raises because the tracking server is down: each call is written to the run's
    write-ahead log first (``hmsa.tracking.buffer``) and sent when the server answers; a failed send is
    retried on a later call (at most every ``HMSA_TRACKING_RETRY_SECONDS``, default 30) and at
    ``close()``, which waits up to ``HMSA_TRACKING_FINISH_WAIT_SECONDS`` (default 30) for the server.
    """

    def __init__(self, run_id: str | None = None, enabled: bool = True, buffer: Path | None = None,
                 reopen: bool = True, run_name: str = "") -> None:
        self.enabled = enabled and is_rank_zero()
        self.run_id = run_id
        # A run this object created (a standalone `hmsa train`) is also ended by it; a stage run
        # belongs to `hmsa submit`, which ends it when the job is done.
        self.owned = run_id is None
        self._client: Any = None
        self._retry_at = 0.0
        self._retry_s = env_seconds("HMSA_TRACKING_RETRY_SECONDS", 30)
        self.deferred = False
        if not self.enabled:
            return
        if self.run_id is None and not self._create_run(run_name):
            return
        self.wal = wal.wal_path(buffer or buffer_dir(), str(self.run_id))
        self.deferred = _sent_from_submit(self.wal)
        if self.owned and _STANDALONE:
            self.set_tags(_STANDALONE["tags"])
            self.log_text(_STANDALONE["config"], "config.yaml")
        if reopen and not self.owned:
            # Re-open a run that a previous (killed or requeued) attempt left behind.
            self._record({"op": "status", "status": "RUNNING"})
            if job_tags():
                self._record({"op": "tags", "t": job_tags()})

    def _create_run(self, run_name: str) -> bool:
        """A standalone command's own run, in the pipeline's experiment, named for what it runs."""
        # `hmsa evaluate` names its run "evaluate · <stage>": the command when the CLI's argv did not say
        command = _STANDALONE.get("command") or run_name.partition(" · ")[0]
        name = run_name or _STANDALONE.get("name") or f"{command or 'hmsa'} · {time.strftime('%Y-%m-%d %H:%M')}"
        note = _STANDALONE.get("note") or f"A standalone `hmsa {command}` (not part of a pipeline invocation)."
        tags = {"hmsa.kind": "standalone", NOTE: note, **git_tags(command), **job_tags()}
        try:
            exp = ensure_experiment(experiment_name())
            self.run_id = self.client.create_run(exp, run_name=name, tags=tags).info.run_id
            return True
        except Exception as exc:  # noqa: BLE001 - without a run id there is nothing to buffer for
            log.warning("MLflow unreachable, this command is not tracked: %s", wal.short_error(exc))
            self.enabled = False
            return False

    @classmethod
    def from_env(cls, run_name: str = "") -> StageTracker:
        """The stage run ``hmsa submit`` handed over, else a new standalone run named ``run_name``."""
        return cls(os.environ.get(ENV_RUN_ID) or None, enabled=os.environ.get("HMSA_TRACKING", "1") != "0",
                   run_name=run_name)

    def child(self, key: str, name: str, tags: dict[str, str]) -> StageTracker:
        """A run nested under this one, e.g. one per evaluation setting. Its creation is the first op of
        its own write-ahead log, so an outage defers it like any other op; ``key`` makes it unique
        under this run (a resumed or re-sent creation finds the run it made before). The caller ends
        it with ``close()``. ``run_id`` is "" until the server has created it."""
        child = StageTracker(enabled=False)
        child.enabled, child.owned = self.enabled, True
        if not self.enabled:
            return child
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in key)
        child._client, child._retry_s, child.deferred = self._client, self._retry_s, self.deferred
        child.wal = wal.wal_path(self.wal.parent, f"{self.run_id}.{safe}")
        child.run_id = wal.resolved_run_id(child.wal)
        child._record({"op": "create", "parent": str(self.run_id), "key": key, "name": name, "tags": tags})
        return child

    @property
    def client(self) -> Any:
        """Created on first use: a deferred tracker never needs one (importing MLflow takes seconds)."""
        if self._client is None:
            self._client = mlflow_client()
        return self._client

    def _record(self, op: dict[str, Any]) -> None:
        wal.append(self.wal, op)
        if self.deferred:
            self.resolved_id()  # reads the id once the sender has created the run, then no more
        elif time.monotonic() >= self._retry_at:
            self.flush()

    def flush(self, wait: float = 0.0) -> bool:
        """Send what is pending; with ``wait`` > 0 keep trying that long. True when nothing is left.
        A deferred tracker sends nothing itself: it waits (up to ``wait``) for the submitting side."""
        if not self.enabled:
            return True
        if self.deferred:
            return self._wait_for_sender(wait)
        deadline = time.monotonic() + wait
        while True:
            done = wal.flush(self.wal, self.client, str(self.run_id))
            self.run_id = wal.resolved_run_id(self.wal) or self.run_id  # a nested run, once created
            if done:
                self._retry_at = 0.0
                return True
            self._retry_at = time.monotonic() + self._retry_s
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(5.0, left))

    def _wait_for_sender(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while True:
            run_id = self.resolved_id()
            done = bool(run_id) and not run_id.startswith(PENDING) and wal.pending(self.wal) == 0
            if done or time.monotonic() >= deadline:
                return done
            time.sleep(0.2)

    def resolved_id(self, wait: float | None = 0.0) -> str:
        """The run's id as the server knows it, waiting up to ``wait`` (None: the finish wait,
        ``HMSA_TRACKING_FINISH_WAIT_SECONDS``) for a deferred run to be created, as a results file
        records it; the local ``pending-`` id if it is not created by then."""
        if wait is None:
            wait = env_seconds("HMSA_TRACKING_FINISH_WAIT_SECONDS", 30)
        deadline = time.monotonic() + (wait if self.deferred else 0.0)
        # A nested run's id is "" and a stage run's "pending-..." until the sender has created it.
        while self.enabled and (not self.run_id or str(self.run_id).startswith(PENDING)):
            self.run_id = wal.resolved_run_id(self.wal) or self.run_id
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        return str(self.run_id or "")

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

    def log_input(self, name: str, digest: str, source: str, context: str, profile: dict[str, Any]) -> None:
        """A dataset input of the run (the UI's Dataset column): ``digest`` its version."""
        if self.enabled:
            self._record({"op": "input", "name": name, "digest": digest, "source": source,
                          "profile": json.dumps(profile), "tags": {"mlflow.data.context": context}})

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled:
            self._record({"op": "terminate", "status": status, "end_time": int(time.time() * 1000)})

    def close(self) -> None:
        """End the run if this tracker created it; wait a little for the server if anything is pending."""
        if not self.enabled:
            return
        if self.owned:
            self.finish()
        if self.deferred and not self.owned:  # the stage run: `hmsa submit` sends the rest after the job
            return
        if not self.flush(wait=env_seconds("HMSA_TRACKING_FINISH_WAIT_SECONDS", 30)):
            log.warning("MLflow still unreachable: run %s continues from %s (hmsa track --sync sends it)",
                        self.run_id, self.wal)


def _sent_from_submit(log: Path) -> bool:
    """Is ``log`` in the folder that this job's ``hmsa submit`` sends (``ENV_SENDER``)?"""
    folder = os.environ.get(ENV_SENDER, "")
    return bool(folder) and Path(folder).resolve() == log.parent.resolve()


def _stage_tracker() -> StageTracker | None:
    """The job's stage run (``hmsa submit`` hands its id over), or None for a standalone command."""
    run_id = os.environ.get(ENV_RUN_ID)
    if not run_id or os.environ.get("HMSA_TRACKING", "1") == "0" or not is_rank_zero():
        return None
    return StageTracker(run_id, reopen=False)


# What a standalone command's own run gets when a tracker creates it (set by ``stage_provenance``).
_STANDALONE: dict[str, Any] = {}
_PROVENANCE: dict[str, str] = {}  # the tags of this process's stage, for its nested runs


def provenance() -> dict[str, str]:
    """The provenance tags this process computed (``stage_provenance``), for nested runs to carry."""
    return {**_PROVENANCE, **job_tags()}


def stage_tags() -> dict[str, str]:
    """The tags ``hmsa submit`` gave this job's stage run (e.g. ``hmsa.paper_rows``)."""
    try:
        tags = json.loads(os.environ.get(ENV_STAGE_TAGS) or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


def stage_provenance(cfg: Any, inputs: list[Path | str], command: str = "") -> None:
    """Tag the stage run with its config hash, the dataset's DVC version (``unversioned`` if none), the
    versions of the other ``inputs``, the job id, and log the resolved config; a standalone command's
    run (created later, by its tracker) gets the same, plus the git tags; ``command`` names it. Called
    by the CLI so every stage kind gets the same tags."""
    import yaml

    from hmsa import config

    if os.environ.get("HMSA_TRACKING", "1") == "0" or not is_rank_zero():
        return
    paths = [Path(p) for p in inputs if p is not None and str(p)]
    tags = {"hmsa.config_hash": config.config_hash(cfg), **input_tags(cfg.data.root, paths)}
    _PROVENANCE.clear()
    _PROVENANCE.update(tags)
    text = yaml.safe_dump(config.to_dict(cfg), sort_keys=False)
    tracker = _stage_tracker()
    _STANDALONE.clear()
    if tracker is not None:
        tracker.set_tags({**tags, **job_tags()})
        tracker.log_text(text, "config.yaml")
        return
    _STANDALONE.update(command=command, tags=tags, config=text,
                       name=f"{command or 'hmsa'} · {cfg.model.name} · {cfg.data.dataset}")


def stage_artifacts(artifacts: dict[str, Path]) -> None:
    """Log files or folders (e.g. the attention figures) to the stage run: artifact dir -> local path."""
    tracker = _stage_tracker()
    if tracker is None:
        return
    for where, path in artifacts.items():
        tracker.log_artifact(Path(path), where)
