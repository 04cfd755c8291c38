"""One sender process talks to MLflow for every stage of a working directory, so stages never do.

Importing MLflow and opening its store takes ~4 s of CPU (``benchmarks/stage_startup.py``). ``hmsa
submit`` used to pay it before submitting (to create the stage run) and every job paid it again. Now
a stage run starts under a local id (``defer_stage_run``); the job only appends to the
write-ahead logs in ``<run dir>/mlflow-wal`` (``tracking.ENV_SENDER``), and a detached sender
(``python -m hmsa.tracking.sender``, one per working directory, host and tracking URI, started by the
first ``hmsa submit`` that needs it) creates the run and sends what every registered stage logs, every
``HMSA_TRACKING_SEND_SECONDS`` (default 1). It stays up ``HMSA_TRACKING_SENDER_IDLE_SECONDS``
(default 60) after its last stage, so the next stage of a pipeline finds MLflow already loaded.

``hmsa submit`` registers its stage (``Sender.start``), and after the job ends the run, waits until
the sender has sent everything (up to ``HMSA_TRACKING_FINISH_WAIT_SECONDS``, default 30) and records
the run's server id in ``mlflow_run.json`` (``Sender.finish``). If the sender is not done by then it
sends itself; a server outage only delays sending (the logs stay: ``hmsa track --sync``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hmsa import tracking
from hmsa.errors import one_line
from hmsa.io import atomic_write_json, pid_running
from hmsa.tracking import buffer as wal
from hmsa.tracking import env_seconds
from hmsa.tracking.parent import get_or_create_parent, invocation_origin

log = logging.getLogger("hmsa.tracking")


def _why(exc: BaseException) -> str:
    return one_line(str(exc))[:300] or type(exc).__name__


def home() -> Path:
    """The sender's folder (lock, log, outbox of registered stages) for this host and tracking URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    key = hashlib.sha1(uri.encode()).hexdigest()[:12]
    return tracking.default_buffer() / f"sender-{socket.gethostname()}-{key}"


def defer_stage_run(stage: str, run_dir: Path, tags: dict[str, str], note: str = "") -> str:
    """A new stage run, without the server: a local id whose write-ahead log starts with the op that
    creates the run (experiment, invocation's parent, git tags, as ``tracking.create_stage_run``); the
    sender sends it first, the stage's other ops after it."""
    import uuid

    run_id = f"{tracking.PENDING}{uuid.uuid4().hex}"
    # The invocation's pipeline config and origin travel with the op: the process that sends it (the
    # sender, ``hmsa track --sync``) may create the invocation's parent run, and may serve several.
    wal.append(wal.wal_path(tracking.buffer_dir(run_dir), run_id), {
        "op": "create_stage", "stage": stage, "experiment": tracking.experiment_name(),
        "invocation": os.environ.get(tracking.ENV_INVOCATION, ""), "tags": {**tags, **tracking.git_tags()},
        "note": note, "pipeline": os.environ.get(tracking.ENV_PIPELINE_CONFIG, ""), "origin": invocation_origin()})
    return run_id


def create_deferred_stage_run(client: Any, op: dict[str, Any]) -> tuple[str, str]:
    """Send a ``create_stage`` op (``defer_stage_run``): the run, under its invocation's parent; (run id,
    experiment id)."""
    exp_id = tracking.ensure_experiment(op["experiment"])
    invocation = op.get("invocation") or ""
    parent = get_or_create_parent(invocation, exp_id, {}, op.get("pipeline"), op.get("origin")) \
        if invocation else None
    all_tags = {"hmsa.stage": op["stage"], "hmsa.kind": "stage", **op.get("tags", {})}
    if op.get("note"):
        all_tags[tracking.NOTE] = op["note"]
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    return client.create_run(exp_id, run_name=op["stage"], tags=all_tags).info.run_id, exp_id


def sync(roots: list[Path]) -> dict[str, bool]:
    """Send every pending log in the run dirs under ``roots`` and in ``.hmsa/tracking``;
    run id -> True if it is now complete."""
    out: dict[str, bool] = {}
    paths = [p for r in roots for p in sorted(Path(r).glob("**/mlflow-wal/*.jsonl"))]
    default = Path(os.environ.get("HMSA_TRACKING_BUFFER", ".hmsa/tracking"))
    paths += sorted(default.glob("*.jsonl"))
    for path in paths:
        if wal.pending(path) > 0:
            out[path.stem] = tracking.StageTracker(path.stem, buffer=path.parent, reopen=False).flush()
    return out


def send_folder(folder: Path, client: Any, first: str = "") -> bool:
    """Send every log in ``folder`` (``first``, the stage run's, before its nested runs'); True when
    nothing is left. Never raises for an outage."""
    done = True
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: (p.stem != first, p.name)):
        if wal.pending(path) > 0:
            done = wal.flush(path, client, path.stem) and done
    return done


def folder_sent(folder: Path, run_id: str) -> bool:
    """Everything in ``folder`` has reached the server and the stage run ``run_id`` exists there."""
    if any(wal.pending(p) > 0 for p in folder.glob("*.jsonl")):
        return False
    return not tracking.resolve_run_id(run_id, folder.parent).startswith(tracking.PENDING)


def _locked(lock: Path) -> int | None:
    """A descriptor holding ``lock`` exclusively, or None if another process holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def ensure_running(where: Path) -> None:
    """Start the sender of ``where`` unless one runs (it holds ``where/lock``)."""
    fd = _locked(where / "lock")
    if fd is None:
        return
    os.close(fd)  # free again: the sender takes it (two racing starters: the second sender just exits)
    env = {k: v for k, v in os.environ.items() if k != tracking.ENV_SENDER}
    with open(where / "sender.log", "ab") as out:
        subprocess.Popen([sys.executable, "-m", "hmsa.tracking.sender", str(where)], cwd=os.getcwd(), env=env,
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


class Sender:
    """``hmsa submit``'s side: register the stage with the sender, then end the run after the job."""

    def __init__(self, run_dir: Path, run_id: str, experiment: str = "") -> None:
        self.experiment = experiment  # known when continuing a recorded run
        self.run_dir = Path(run_dir)
        self.folder = tracking.buffer_dir(run_dir)
        self.run_id = run_id
        self.home = home()
        key = hashlib.sha1(str(self.folder).encode()).hexdigest()[:16]
        self.entry = self.home / "outbox" / f"{key}.json"

    def _register(self, done: bool) -> None:
        atomic_write_json(self.entry, {"folder": str(self.folder), "run_id": self.run_id, "pid": os.getpid(),
                                       "done": done})
        ensure_running(self.home)

    def start(self) -> Sender:
        self._register(done=False)
        return self

    def finish(self, status: str) -> bool:
        """End the stage run with ``status``, wait for the sender, record the run in ``mlflow_run.json``.
        True when everything reached the server."""
        wal.append(wal.wal_path(self.folder, self.run_id),
                   {"op": "terminate", "status": status, "end_time": int(time.time() * 1000)})
        self._register(done=True)
        deadline = time.monotonic() + env_seconds("HMSA_TRACKING_FINISH_WAIT_SECONDS", 30)
        done = folder_sent(self.folder, self.run_id)
        while not done and time.monotonic() < deadline:
            time.sleep(0.1)
            done = folder_sent(self.folder, self.run_id)
        client = None
        if not done:  # the sender is stuck or gone: one attempt of our own
            try:
                client = tracking.mlflow_client()
                done = send_folder(self.folder, client, self.run_id)
            except Exception as exc:  # noqa: BLE001 - tracking never fails a stage
                log.warning("MLflow: sending %s failed (%s)", self.folder, _why(exc))
        run_id = tracking.resolve_run_id(self.run_id, self.run_dir)
        atomic_write_json(self.run_dir / "mlflow_run.json", {"run_id": run_id, "status": status,
                                                        "experiment_id": _experiment(self.folder, self.run_id, client)
                                                        or self.experiment})
        if not done:
            log.warning("MLflow unreachable: stage run %s continues from %s (hmsa track --sync sends it)",
                        run_id, self.folder)
        return done


def _experiment(folder: Path, run_id: str, client: Any) -> str:
    """The stage run's experiment id: recorded when the run was created from the log, else asked."""
    found = wal.resolved_experiment(wal.wal_path(folder, run_id))
    resolved = tracking.resolve_run_id(run_id, folder.parent)
    if found or client is None or resolved.startswith(tracking.PENDING):
        return found
    try:
        return str(client.get_run(resolved).info.experiment_id)
    except Exception:  # noqa: BLE001 - the run id alone is enough to continue it
        return ""


def job_env(run_dir: Path) -> dict[str, str]:
    """What the job needs to leave the sending to the sender."""
    return {tracking.ENV_SENDER: str(tracking.buffer_dir(run_dir))}


def _entries(outbox: Path) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for path in sorted(outbox.glob("*.json")):
        try:
            out.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):  # being replaced right now: read it on the next pass
            continue
    return out


def _pass(where: Path, client: Any) -> bool:
    """Send every registered folder once; True when everything was sent."""
    entries = _entries(where / "outbox")
    ok = True
    for path, entry in entries:
        folder, run_id = Path(entry["folder"]), str(entry["run_id"])
        try:
            sent = send_folder(folder, client, run_id)
        except Exception as exc:  # noqa: BLE001 - e.g. a run dir deleted meanwhile: never stop the sender
            log.warning("MLflow: sending %s failed (%s)", folder, _why(exc))
            sent = False
        ok = ok and sent
        # A finished stage leaves once sent; one whose `hmsa submit` died leaves now (its logs stay on
        # disk for the next `hmsa submit` of that stage, or `hmsa track --sync`).
        if (entry.get("done") and sent) or not pid_running(int(entry.get("pid", 0))):
            path.unlink(missing_ok=True)
    return ok


def serve(where: Path) -> int:
    """The sender's loop; returns when nothing was registered for the idle time."""
    every = env_seconds("HMSA_TRACKING_SEND_SECONDS", 1)
    retry = env_seconds("HMSA_TRACKING_RETRY_SECONDS", 30)
    idle = env_seconds("HMSA_TRACKING_SENDER_IDLE_SECONDS", 60)
    client = None
    while True:
        fd = _locked(where / "lock")
        if fd is None:
            return 0  # another sender serves
        try:
            last = time.monotonic()
            while time.monotonic() - last < idle:
                if not any((where / "outbox").glob("*.json")):
                    time.sleep(every)
                    continue
                client = client or tracking.mlflow_client()  # MLflow is imported only once there is work
                ok = _pass(where, client)
                last = time.monotonic()
                time.sleep(every if ok else retry)
        finally:
            os.close(fd)
        # A stage that registered after the last look saw the lock held and started no sender: serve it.
        if not any((where / "outbox").glob("*.json")):
            return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.exit(serve(Path(sys.argv[1])))
