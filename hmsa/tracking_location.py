"""Artifact locations that move with the project (runs copied or moved to another path stay whole).

MLflow stores a local store's artifact location as an absolute path: it resolves ``./mlruns`` against
the working directory when it creates an experiment, and each run's artifact URI is built from it. A
checkout copied from scratch to project storage would go on reading (and writing) the old place.
When the SQLite database lives in the working directory — the pipeline's ``sqlite:///mlflow.db``,
relative to the Snakemake working directory where every stage runs — the experiment's location is
stored relative to it instead (``mlruns/<id>``), and so are the artifact URIs of its runs. MLflow
resolves a relative local location against the reader's working directory, so ``mlflow ui`` is
started in the project directory (README). A server store (``http://…``) is left as it is.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("hmsa.tracking")

ARTIFACT_DIR = "mlruns"  # MLflow's default artifact root for a local store


def local_db(tracking_uri: str) -> Path | None:
    """The SQLite file of a ``sqlite:///`` tracking URI (absolute), else None."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return Path(tracking_uri[len(prefix):].split("?", 1)[0]).resolve()


def _relative(location: str, root: Path) -> str | None:
    """``location`` relative to the working directory if it lies under ``root`` (a path or file URI)."""
    for prefix in (str(root), f"file://{root}"):
        if location == prefix or location.startswith(prefix + "/"):
            return ARTIFACT_DIR + location[len(prefix):]
    return None


def unpin_artifact_location(tracking_uri: str, experiment_id: str) -> bool:
    """Store the experiment's artifact location, and its runs' artifact URIs, relative to the working
    directory when its database is there; whether anything changed. Idempotent."""
    db = local_db(tracking_uri)
    cwd = Path.cwd().resolve()
    if db is None or db.parent != cwd or not db.is_file():
        return False
    root = cwd / ARTIFACT_DIR
    with sqlite3.connect(db, timeout=60) as con:  # MLflow has no API to change an artifact location
        row = con.execute("SELECT artifact_location FROM experiments WHERE experiment_id = ?",
                          (int(experiment_id),)).fetchone()
        location = _relative(row[0], root) if row and row[0] else None
        if location is None:
            return False
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                    (location, int(experiment_id)))
        runs = con.execute("SELECT run_uuid, artifact_uri FROM runs WHERE experiment_id = ?",
                           (int(experiment_id),)).fetchall()
        for run_id, uri in runs:
            relative = _relative(uri or "", root)
            if relative is not None:
                con.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (relative, run_id))
    log.info("MLflow experiment %s: artifacts at %s, relative to %s", experiment_id, location, cwd)
    return True
