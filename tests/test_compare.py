"""`hmsa compare RUN_A RUN_B`: two runs' per-class IoU tables from MLflow, side by side, by run id or
stage name; ambiguous input fails with one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hmsa import tracking
from hmsa.cli import main

CLASSES = ["road", "sidewalk", "building", "wall"]


def _eval_run(stage: str, ious: dict[str, list], monkeypatch: pytest.MonkeyPatch) -> str:
    """A stage run with one per-class table per setting, logged the way the evaluation logs it."""
    exp = tracking.ensure_experiment("compare")
    run = tracking.create_stage_run(stage, exp, None, {})
    monkeypatch.setenv(tracking.ENV_RUN_ID, run)
    t = tracking.StageTracker.from_env()
    for setting, values in ious.items():
        t.log_table({"class": CLASSES, "iou": values}, artifact_file=f"per_class/{setting}.json")
    t.close()
    tracking.finish_run(run)
    return run


def test_compare_by_stage_and_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(3)
    a = [float(v) for v in rng.uniform(0, 1, 4)]
    b = [float(v) for v in rng.uniform(0, 1, 3)] + [None]
    run_a = _eval_run("table2_avgpool", {"avgpool_0.5-1-2_flip": a}, monkeypatch)
    run_b = _eval_run("student", {"hierarchical_0.5-1-2_flip": b}, monkeypatch)
    out = tmp_path / "cmp.csv"
    assert main(["compare", "table2_avgpool", run_b, "--out", str(out)]) == 0
    assert run_a in capsys.readouterr().out
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["class"] for r in rows] == [*CLASSES, "mean"]
    col_a, col_b = (k for k in rows[0] if k.startswith(("A ", "B ")))
    for r, va, vb in zip(rows, a, b, strict=False):
        assert float(r[col_a]) == pytest.approx(100 * va, abs=0.005)
        if vb is None:
            assert r[col_b] == "" and r["Δ"] == ""
        else:
            assert float(r["Δ"]) == pytest.approx(100 * (vb - va), abs=0.01)
    assert float(rows[-1][col_b]) == pytest.approx(100 * np.mean(b[:3]), abs=0.005)


def test_ambiguous_or_unknown_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    two = {"single_1": [0.1] * 4, "avgpool_0.5-1": [0.2] * 4}
    run = _eval_run("table1_single", two, monkeypatch)
    other = _eval_run("other", {"single_1": [0.3] * 4}, monkeypatch)
    assert main(["compare", run, other]) == 2
    # (MLflow's own INFO lines about creating the test database may precede it)
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hmsa compare:")]
    assert "--setting" in err and "avgpool_0.5-1" in err
    assert main(["compare", run, other, "--setting", "single_1"]) == 0
    capsys.readouterr()
    assert main(["compare", "no_such_stage", other]) == 2
    assert "no_such_stage" in capsys.readouterr().err
