"""Artifact locations that move with the project (runs copied or moved to another path stay whole).

MLflow stores a local store's artifact location as an absolute path: it resolves ``./mlruns`` against
the working directory when it creates an experiment, and each run's artifact URI is built from it. A
checkout copied from scratch to project storage would go on reading (and writing) the old place.
When the SQLite database lives in the working directory — the pipeline's ``sqlite:///mlflow.db``,
relative to the Snakemake working directory where every stage runs — each experiment's location is
stored relative to it instead (``mlruns/<id>``), and so are the artifact URIs of its runs. MLflow
resolves a relative local location against the reader's working directory, so ``mlflow ui`` is
started in the project directory (README). A server store (``http://…``) is left as it is.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
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


def unpin_artifact_locations(tracking_uri: str) -> int:
    """Store every experiment's artifact location under ``./mlruns``, and its runs' artifact URIs,
    relative to the working directory when the database is there; how many experiments changed.
    Idempotent (a relative location is left as it is)."""
    db = local_db(tracking_uri)
    cwd = Path.cwd().resolve()
    if db is None or db.parent != cwd or not db.is_file():
        return 0
    root = cwd / ARTIFACT_DIR
    changed = 0
    con = sqlite3.connect(db, timeout=60)  # MLflow has no API to change an artifact location
    with closing(con), con:  # one transaction, then closed
        for exp_id, location in con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall():
            relative = _relative(location or "", root)
            if relative is None:
                continue
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (relative, exp_id))
            runs = con.execute("SELECT run_uuid, artifact_uri FROM runs WHERE experiment_id = ?", (exp_id,))
            for run_id, uri in runs.fetchall():
                if (run_relative := _relative(uri or "", root)) is not None:
                    con.execute("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", (run_relative, run_id))
            changed += 1
    if changed:
        log.info("MLflow: artifact locations of %d experiment(s) made relative to %s", changed, cwd)
    return changed
