"""A write-ahead log of MLflow operations, so that a tracking outage never fails a stage or loses data.

Every operation of a run (metrics, params, tags, status, tables, text, artifacts) is first appended to
``<dir>/<run_id>.jsonl`` (fsynced, append-only: a killed job loses at most a half-written last line),
then sent in order from the byte offset recorded in ``<run_id>.sent``. When the server is unreachable
the operations simply stay in the log and go out on the next call that finds it back, at the end of the
stage, or with ``hmsa track --sync``. Re-sending is harmless: MLflow ignores a metric it already has,
params and tags re-set the same value, tables and artifacts overwrite, a dataset input is logged once.

A nested run (one per evaluation setting) is created by the first op of its own log (``create``), so
it too survives an outage: the log is named ``<parent run id>.<key>.jsonl`` until the run exists, and
the id the server gave it is kept in ``<...>.run``. Creating finds an existing child of the same parent
with the same ``hmsa.child_key`` tag first, so a re-sent op or a re-run stage never makes a second one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hmsa.io import atomic_write_text, flock

log = logging.getLogger("hmsa.tracking")

# Metrics of consecutive ops are sent together after an outage; MLflow accepts 1000 per batch.
_MAX_BATCH_METRICS = 1000
# The prefix of a run id that `hmsa submit` made up while the server was unreachable: the first op of
# that run's log creates it (``create_stage``), and ``<log>.run`` then holds the server's id.
PENDING = "pending-"


def wal_path(directory: Path, run_id: str) -> Path:
    return Path(directory) / f"{run_id}.jsonl"


def resolved_run_id(path: Path) -> str:
    """The run id a nested run's log was created as ("" before its ``create`` op reached the server)."""
    try:
        return path.with_suffix(".run").read_text().strip()
    except FileNotFoundError:
        return ""


def resolved_experiment(path: Path) -> str:
    """The experiment id of a stage run created from its log ("" before that, or for a nested run)."""
    try:
        return path.with_suffix(".experiment").read_text().strip()
    except FileNotFoundError:
        return ""


def _write_run_id(path: Path, run_id: str) -> None:
    atomic_write_text(path.with_suffix(".run"), run_id)  # readable by the group, like every output


def _locked(path: Path) -> contextlib.AbstractContextManager[None]:
    """Two trackers of one run (e.g. the CLI and the stage code, or a job and `hmsa submit`) take turns."""
    return flock(path.with_suffix(".lock"))


def append(path: Path, op: dict[str, Any]) -> None:
    """Append one operation durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(op, allow_nan=True, separators=(",", ":")) + "\n"
    with _locked(path), open(path, "a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a writer was killed mid-line: close that line, it is skipped
                fh.write(b"\n")
        fh.write(line.encode())
        fh.flush()
        os.fsync(fh.fileno())


def _read_offset(path: Path) -> int:
    try:
        return int(path.with_suffix(".sent").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def _write_offset(path: Path, offset: int) -> None:
    atomic_write_text(path.with_suffix(".sent"), str(offset))


def pending(path: Path) -> int:
    """Bytes of the log not yet sent (0 when everything reached the server)."""
    if not path.exists():
        return 0
    return max(0, path.stat().st_size - _read_offset(path))


def _pending_ops(path: Path) -> list[tuple[int, dict[str, Any] | None]]:
    """(end offset, op) of every complete unsent line; op None for a line that does not parse."""
    start = _read_offset(path)
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read()
    out: list[tuple[int, dict[str, Any] | None]] = []
    pos = start
    for raw in data.split(b"\n")[:-1]:  # the last piece is empty or an unfinished line
        pos += len(raw) + 1
        try:
            out.append((pos, json.loads(raw)))
        except ValueError:
            out.append((pos, None))
    return out


def is_transient(exc: BaseException) -> bool:
    """Server down, timeout, 5xx, 429: keep the op and retry later. A 4xx means the op itself is bad."""
    from mlflow.exceptions import MlflowException

    from hmsa.errors import HmsaError

    if isinstance(exc, HmsaError):  # bad input (e.g. an invocation id): no retry makes it good
        return False
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return not (400 <= status < 500) or status == 429
    return True


def _group(ops: list[tuple[int, dict[str, Any] | None]]) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """Merge consecutive metric ops into batches (fewer requests when a backlog goes out)."""
    batch: list = []
    end = 0
    for pos, op in ops:
        if op is not None and op.get("op") == "metrics" and len(batch) + len(op["m"]) <= _MAX_BATCH_METRICS:
            batch += op["m"]
            end = pos
            continue
        if batch:
            yield end, {"op": "metrics", "m": batch}
            batch = []
        if op is not None and op.get("op") == "metrics":
            batch, end = list(op["m"]), pos
            continue
        yield pos, op
    if batch:
        yield end, {"op": "metrics", "m": batch}


def flush(path: Path, client: Any, run_id: str) -> bool:
    """Send the unsent ops in order; True when nothing is left. Raises nothing for a server outage."""
    if not path.exists():
        return True
    with _locked(path):
        run_id = resolved_run_id(path) or run_id
        for end, op in _group(_pending_ops(path)):
            if op is None:
                log.warning("%s: skipping a line that is not valid JSON (a writer was killed mid-line)", path)
            elif op.get("op") in ("create", "create_stage"):
                try:
                    if op["op"] == "create_stage":
                        from hmsa.tracking.sender import create_deferred_stage_run

                        run_id, experiment = create_deferred_stage_run(client, op)
                        atomic_write_text(path.with_suffix(".experiment"), experiment)
                    else:
                        parent = _resolve_parent(path.parent, client, op["parent"])
                        if not parent:  # its stage run is itself still waiting for the server
                            return False
                        run_id = create_child(client, {**op, "parent": parent})
                except Exception as exc:  # noqa: BLE001 - nothing after it can be sent without the run
                    if is_transient(exc):
                        log.warning("MLflow unreachable (%s); nested run %s kept in %s", short_error(exc),
                                    op.get("key"), path)
                        return False
                    # e.g. its parent run was deleted: every op of this log would be refused too
                    log.warning("MLflow refused to create nested run %s (%s); dropped %s", op.get("key"),
                                short_error(exc), path)
                    _write_offset(path, path.stat().st_size)
                    return True
                _write_run_id(path, run_id)
            elif not _send(client, run_id, op, path):
                return False
            _write_offset(path, end)
    return True


def _resolve_parent(directory: Path, client: Any, parent: str) -> str:
    """A nested run's parent id; a pending stage run is created first (its log is beside this one)."""
    if not parent.startswith(PENDING):
        return parent
    log_path = wal_path(directory, parent)
    flush(log_path, client, parent)
    return resolved_run_id(log_path)


def create_child(client: Any, op: dict[str, Any]) -> str:
    """The nested run of ``op`` (parent, key, name, tags): found by its key tag, else created."""
    parent, key = op["parent"], op["key"]
    experiment = client.get_run(parent).info.experiment_id
    found = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}' and "
                               f"tags.`hmsa.child_key` = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        if found[0].info.status != "RUNNING":  # a resumed or re-run evaluation logs into it again
            client.update_run(run_id, status="RUNNING")
        return run_id
    tags = {**op.get("tags", {}), "mlflow.parentRunId": parent, "hmsa.child_key": key}
    return client.create_run(experiment, run_name=op.get("name") or None, tags=tags).info.run_id


def _send(client: Any, run_id: str, op: dict[str, Any], path: Path) -> bool:
    """False if the server is unreachable; an op the server rejects (4xx) is dropped with a warning."""
    try:
        apply(client, run_id, op)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure must leave the stage running
        if is_transient(exc):
            log.warning("MLflow unreachable (%s); %d bytes kept in %s", short_error(exc), pending(path), path)
            return False
        if op["op"] == "metrics" and len(op["m"]) > 1:
            # One bad metric must not drop the good ones merged into the same batch.
            return all(_send(client, run_id, {"op": "metrics", "m": [m]}, path) for m in op["m"])
        log.warning("MLflow rejected a %s op for run %s, dropped: %s", op["op"], run_id, short_error(exc))
        return True


def short_error(exc: BaseException) -> str:
    """What a log line says of a failed MLflow call: the first line of its message, at most 300 characters."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def apply(client: Any, run_id: str, op: dict[str, Any]) -> None:
    """Send one op with the MLflow client."""
    kind = op["op"]
    if kind == "metrics":
        from mlflow.entities import Metric

        client.log_batch(run_id, metrics=[Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in op["m"]])
    elif kind == "params":
        from mlflow.entities import Param

        existing = client.get_run(run_id).data.params
        # Params are immutable in MLflow: a resumed run (or a re-sent op) only adds what is missing.
        new = [Param(k, v) for k, v in op["p"].items() if k not in existing]
        for i in range(0, len(new), 100):
            client.log_batch(run_id, params=new[i:i + 100])
    elif kind == "tags":
        from mlflow.entities import RunTag

        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in op["t"].items()])
    elif kind == "status":
        client.update_run(run_id, status=op["status"])
    elif kind == "terminate":
        client.set_terminated(run_id, status=op["status"], end_time=op.get("end_time"))
    elif kind == "table":
        _log_table(client, run_id, op["data"], op["file"])
    elif kind == "text":
        client.log_text(run_id, op["text"], op["file"])
    elif kind == "artifact":
        _log_artifact(client, run_id, Path(op["path"]), op.get("dir"))
    elif kind == "input":
        _log_input(client, run_id, op)
    else:
        raise ValueError(f"unknown tracking op {kind!r}")


def _log_artifact(client: Any, run_id: str, path: Path, artifact_path: str | None) -> None:
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    elif path.exists():
        client.log_artifact(run_id, str(path), artifact_path)
    else:
        log.warning("artifact %s no longer exists; not logged to run %s", path, run_id)


def _log_table(client: Any, run_id: str, data: dict[str, list], artifact_file: str) -> None:
    """What ``MlflowClient.log_table`` writes (a split-oriented JSON artifact + the loggedArtifacts tag),
    except that an existing table is replaced: log_table *appends* rows, so a re-sent op or a resumed
    evaluation would duplicate every class."""
    import pandas as pd
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(artifact_file).name
        pd.DataFrame(data).to_json(local, orient="split", index=False)
        parent = str(Path(artifact_file).parent)
        client.log_artifact(run_id, str(local), None if parent == "." else parent)
    logged = json.loads(client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    entry = {"path": artifact_file, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(logged + [entry]))


def _log_input(client: Any, run_id: str, op: dict[str, Any]) -> None:
    """A dataset input (the UI's Dataset column). MLflow keeps one row per (name, digest) and per
    (dataset, run), so a re-sent op adds nothing."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=op["name"], digest=str(op["digest"])[:36], source_type=op.get("source_type", "local"),
                      source=op["source"], profile=op.get("profile"))
    tags = [InputTag(k, str(v)) for k, v in (op.get("tags") or {}).items()]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags)])
