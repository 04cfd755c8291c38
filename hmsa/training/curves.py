"""Training curves as a file (``RUN_DIR/curves.csv``, exported beside ``train.json``), so that
``dvc plots diff`` can compare them between commits; MLflow holds the same values as metrics
(``loss/window_mean``). Each row's loss is the mean over the batches since the previous row.

Rows are appended as the run goes; a run resumed from a checkpoint logs again the steps after it, so
the export keeps the last row of each step, in step order."""

from __future__ import annotations

import csv
from pathlib import Path

from hmsa.io import atomic_write_text, naming

COLUMNS = ("step", "loss", "lr")
FILE = "curves.csv"


def append(run_dir: Path, step: int, loss: float, lr: float) -> None:
    path = Path(run_dir) / FILE
    new = not path.exists()
    with naming(path), open(path, "a", newline="") as fh:  # a full disk: one line naming the file
        if new:
            fh.write(",".join(COLUMNS) + "\n")
        fh.write(f"{step},{loss:.6g},{lr:.6g}\n")


def export(run_dir: Path, out: Path, total: int) -> Path:
    """Write the run's curve, one row per step up to ``total``, to ``out`` atomically."""
    rows: dict[int, list[str]] = {}
    src = Path(run_dir) / FILE
    if src.exists():
        with open(src, newline="") as fh:
            for row in csv.reader(fh):
                # A torn last line (the job was killed mid-write) or the header is skipped.
                if len(row) == len(COLUMNS) and row[0].isdigit() and int(row[0]) <= total:
                    rows[int(row[0])] = row
    lines = [",".join(COLUMNS)] + [",".join(rows[s]) for s in sorted(rows)]
    atomic_write_text(Path(out), "\n".join(lines) + "\n")
    return Path(out)
