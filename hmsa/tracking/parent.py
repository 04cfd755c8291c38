"""The parent run of a pipeline invocation: created by whichever stage submits first, named after
the pipeline, with the resolved pipeline config as params and each table's headline numbers as
metrics; and the closing of parents (and their stage runs) that a killed invocation left RUNNING."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from hmsa import tracking
from hmsa.errors import BadInputError
from hmsa.io import file_lock, pid_running
from hmsa.tracking.buffer import short_error
from hmsa.tracking.tags import git_tags

log = logging.getLogger("hmsa.tracking")

# Set by the Snakefile: which process runs the invocation, so a later one can tell it is gone.
ENV_SNAKEMAKE_PID = "HMSA_SNAKEMAKE_PID"


# An invocation id names a file under .hmsa/invocations and is quoted into an MLflow filter string:
# letters, digits, '-', '_' and '.', not starting with '.' (no '..', no '/', no quote).
_INVOCATION_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def check_invocation(invocation: str, where: str = tracking.ENV_INVOCATION) -> str:
    """``invocation`` if it is a safe id, else a one-line error naming ``where`` it came from."""
    if not _INVOCATION_ID.fullmatch(invocation):
        raise BadInputError(f"{where} {invocation!r}: an invocation id is 1-128 letters, digits, '-', '_' "
                            "or '.' (not starting with '.')")
    return invocation


def get_or_create_parent(invocation: str, experiment_id: str, tags: dict[str, str],
                         pipeline_env: str | None = None, origin: dict[str, str] | None = None) -> str:
    """The parent run of one pipeline invocation; created by whichever stage submits first.
    ``pipeline_env`` and ``origin``: what ``HMSA_PIPELINE_CONFIG`` and ``origin()`` were in that
    invocation (the sender serves several invocations), else taken from this process."""
    check_invocation(invocation)
    pipeline = _pipeline_config(pipeline_env)
    with file_lock("parent"):
        client = tracking.mlflow_client()
        found = client.search_runs([experiment_id], f"tags.`hmsa.invocation` = '{invocation}'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        label = pipeline.get("name") or "pipeline"
        note = (f"One invocation of the `{label}` pipeline (Snakemake): each stage is a nested run, each "
                "evaluation setting a run nested under its stage. Params: the pipeline config.")
        close_stale_parents(client, experiment_id)
        run = client.create_run(experiment_id, run_name=f"{label} · {time.strftime('%Y-%m-%d %H:%M')}",
                                tags={"hmsa.invocation": invocation, "hmsa.kind": "pipeline", tracking.NOTE: note,
                                      **(origin if origin is not None else invocation_origin()), **git_tags(),
                                      **tags})
        # Lets the Snakefile's onsuccess/onerror know there is a parent run to close, without
        # importing MLflow when nothing ran.
        marker = Path(".hmsa/invocations") / invocation
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(run.info.run_id)
    if pipeline:
        log_parent_params(pipeline, run.info.run_id)
    return run.info.run_id


def invocation_origin() -> dict[str, str]:
    """Where the invocation runs: the host and Snakemake's process id (``HMSA_SNAKEMAKE_PID``)."""
    pid = os.environ.get(ENV_SNAKEMAKE_PID, "")
    return {"hmsa.host": socket.gethostname(), **({"hmsa.snakemake_pid": pid} if pid.isdigit() else {})}


def close_stale_parents(client: Any, experiment_id: str) -> list[str]:
    """Mark KILLED the parent runs still RUNNING whose Snakemake process is gone (killed before its
    ``onerror`` could close them), and their stage runs still RUNNING. Only parents started on this
    host are judged (another host's process table cannot be read). A stage that is run again later
    continues its run, which reopens it. Returns the parents closed."""
    host = socket.gethostname()
    stale = [r for r in client.search_runs([experiment_id], "tags.`hmsa.kind` = 'pipeline' and "
                                           "attributes.status = 'RUNNING'", max_results=200)
             if r.data.tags.get("hmsa.host") == host and r.data.tags.get("hmsa.snakemake_pid", "").isdigit()
             and not pid_running(int(r.data.tags["hmsa.snakemake_pid"]))]
    for parent in stale:
        children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' "
                                      "and attributes.status = 'RUNNING'", max_results=1000)
        for run in [*children, parent]:
            client.set_tag(run.info.run_id, "hmsa.closed_because", "its pipeline invocation was killed")
            client.set_terminated(run.info.run_id, "KILLED")
        log.info("closed the parent run %s of a killed invocation (and %d stage runs)", parent.info.run_id,
                 len(children))
    return [p.info.run_id for p in stale]


def _pipeline_config(value: str | None = None) -> dict[str, Any]:
    """The pipeline config in ``HMSA_PIPELINE_CONFIG`` (or ``value``): inline JSON (what the Snakefile
    sets) or the path of a YAML/JSON file; {} when unset or unreadable."""
    value = (os.environ.get(tracking.ENV_PIPELINE_CONFIG, "") if value is None else value).strip()
    if not value:
        return {}
    import yaml

    try:
        data = yaml.safe_load(value if value.startswith("{") else Path(value).read_text())  # JSON is YAML
    except (OSError, yaml.YAMLError) as exc:
        log.warning("%s: not readable, the parent run gets no params: %s", tracking.ENV_PIPELINE_CONFIG, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _flat_params(config: dict[str, Any]) -> dict[str, str]:
    """Nested dict -> MLflow params within its limits (keys 250 characters, values 6000)."""
    from hmsa.config import flatten

    return {k[:250]: (v if isinstance(v, str) else json.dumps(v))[:6000] for k, v in flatten(config).items()}


def _current_parent() -> str | None:
    """This invocation's parent run (``HMSA_INVOCATION_ID``), or None outside a pipeline."""
    invocation = os.environ.get(tracking.ENV_INVOCATION, "")
    if invocation:
        check_invocation(invocation)
    marker = Path(".hmsa/invocations") / invocation
    if invocation and marker.is_file():
        return marker.read_text().strip() or None
    if not invocation or os.environ.get("HMSA_TRACKING", "1") == "0":
        return None
    return get_or_create_parent(invocation, tracking.ensure_experiment(tracking.experiment_name()), {})


def log_parent_params(config: dict[str, Any], run_id: str | None = None) -> bool:
    """Log a (nested) config as the flattened params of the invocation's parent run (or ``run_id``).
    Through the write-ahead log: never raises for an outage. True if something was logged."""
    return _to_parent(run_id, lambda t: t.log_params(_flat_params(config)))


def log_parent_metrics(metrics: dict[str, float], run_id: str | None = None) -> bool:
    """Log summary metrics (e.g. each table's headline numbers) to the current pipeline invocation's
    parent run (or ``run_id``). Through the write-ahead log: never raises for an outage. True if
    there was a parent run to log to."""
    return _to_parent(run_id, lambda t: t.log_metrics(metrics))


def _to_parent(run_id: str | None, log_to: Any) -> bool:
    if os.environ.get("HMSA_TRACKING", "1") == "0" or not tracking.is_rank_zero():
        return False
    try:
        run_id = run_id or _current_parent()
    except Exception as exc:  # noqa: BLE001 - creating the parent needs the server; a report does not
        log.warning("MLflow unreachable, nothing logged to the pipeline's parent run: %s", short_error(exc))
        return False
    if not run_id:
        return False
    tracker = tracking.StageTracker(run_id, buffer=tracking.default_buffer(), reopen=False)
    log_to(tracker)
    tracker.flush()
    return True
