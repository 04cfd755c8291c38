"""`hmsa compare A B`: two evaluations' per-class IoU from MLflow, side by side, by stage name, run name
or run id; columns named by what was typed; settings in either spelling; quiet; ambiguous input fails
with one line."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from hmsa import tracking
from hmsa.cli import main
from hmsa.reporting.compare import label, setting_of

CLASSES = ["road", "sidewalk", "building", "wall"]


def _eval_run(stage: str, ious: dict[str, list], monkeypatch: pytest.MonkeyPatch) -> str:
    """A stage run with one per-class table per setting (fractions): the layout before nested runs."""
    exp = tracking.ensure_experiment("compare")
    run = tracking.create_stage_run(stage, exp, None, {})
    monkeypatch.setenv(tracking.ENV_RUN_ID, run)
    t = tracking.StageTracker.from_env()
    for setting, values in ious.items():
        t.log_table({"class": CLASSES, "iou": values}, artifact_file=f"per_class/{setting}.json")
    t.close()
    tracking.finish_run(run)
    monkeypatch.delenv(tracking.ENV_RUN_ID)
    return run


def _nested_eval_run(stage: str, ious: dict[str, dict[str, float]]) -> str:
    """A stage run with one nested run per setting carrying ``iou/<class>`` metrics in percent and the
    setting as params, as the evaluation logs it for MLflow's compare view."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = tracking.ensure_experiment("compare")
    parent = client.create_run(exp, run_name=stage, tags={"hmsa.stage": stage}).info.run_id
    for spec, values in ious.items():
        s = setting_of(spec)
        child = client.create_run(exp, run_name=f"{stage} · {label(s)}",
                                  tags={"mlflow.parentRunId": parent, "hmsa.stage": stage}).info.run_id
        client.log_param(child, "eval.method", s.method)
        client.log_param(child, "eval.scales", ",".join(f"{v:g}" for v in s.scales))
        client.log_param(child, "eval.flip", str(s.flip).lower())
        for cls, v in values.items():
            client.log_metric(child, f"iou/{cls}", v)
        client.set_terminated(child)
    client.set_terminated(parent)
    return parent


def test_setting_spellings() -> None:
    a, b = setting_of("hierarchical:0.5,1,2:flip"), setting_of("hierarchical_0.5-1-2_flip")
    assert a == b and label(a) == "hierarchical:0.5,1,2:flip" and a.name == "hierarchical_0.5-1-2_flip"
    assert setting_of("avgpool_0.25-0.5-1-2") == setting_of("avgpool:2,1,0.5,0.25")
    with pytest.raises(ValueError, match="METHOD:SCALES"):
        setting_of("bogus_1")


def test_compare_by_stage_and_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    rng = np.random.default_rng(3)
    a = [float(v) for v in rng.uniform(0, 1, 4)]
    b = [float(v) for v in rng.uniform(0, 1, 3)] + [None]
    run_a = _eval_run("table2_avgpool", {"avgpool_0.5-1-2_flip": a}, monkeypatch)
    run_b = _eval_run("student", {"hierarchical_0.5-1-2_flip": b}, monkeypatch)
    out = tmp_path / "cmp.csv"
    capfd.readouterr()
    assert main(["compare", "table2_avgpool", run_b, "--out", str(out)]) == 0
    printed = capfd.readouterr()
    assert run_a in printed.out and "avgpool:0.5,1,2:flip" in printed.out
    # quiet: no MLflow artifact-download progress bars
    assert "Downloading" not in printed.err and "it/s" not in printed.err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    # columns named by what was typed (a stage name), and by the run's stage for a run id
    assert list(rows[0]) == ["class", "table2_avgpool", "student", "Δ"]
    assert [r["class"] for r in rows] == [*CLASSES, "mean"]
    for r, va, vb in zip(rows, a, b, strict=False):
        assert float(r["table2_avgpool"]) == pytest.approx(100 * va, abs=0.005)
        if vb is None:
            assert r["student"] == "" and r["Δ"] == ""
        else:
            assert float(r["Δ"]) == pytest.approx(100 * (vb - va), abs=0.01)
    assert float(rows[-1]["student"]) == pytest.approx(100 * np.mean(b[:3]), abs=0.005)


def test_nested_runs_and_the_config_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    single = {c: 10.0 + i for i, c in enumerate(CLASSES)}
    avg = {c: 20.0 + 2 * i for i, c in enumerate(CLASSES)}
    _nested_eval_run("evaluate_table1_single", {"single:1": single, "avgpool:0.5,1,2": avg})
    out = tmp_path / "cmp.csv"
    # the same stage twice, one setting each: in the config spelling, then in the file-name spelling
    assert main(["compare", "evaluate_table1_single", "evaluate_table1_single", "--setting", "single:1",
                 "--setting", "avgpool_0.5-1-2", "--out", str(out)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["class", "evaluate_table1_single (single:1)",
                             "evaluate_table1_single (avgpool:0.5,1,2)", "Δ"]
    by = {r["class"]: r for r in rows}
    assert sorted(by) == sorted([*CLASSES, "mean"])
    for c in CLASSES:
        assert float(by[c]["Δ"]) == pytest.approx(avg[c] - single[c])
    assert float(by["mean"]["Δ"]) == pytest.approx(np.mean(list(avg.values())) - np.mean(list(single.values())))
    # a setting the run does not have names the ones it has, in the config spelling
    capsys.readouterr()
    assert main(["compare", "evaluate_table1_single", "evaluate_table1_single", "--setting", "maxpool:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "'maxpool:1'" in err and "single:1" in err and "avgpool:0.5,1,2" in err


def test_ambiguous_or_unknown_input_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    two = {"single_1": [0.1] * 4, "avgpool_0.5-1": [0.2] * 4}
    run = _eval_run("table1_single", two, monkeypatch)
    other = _eval_run("other", {"single_1": [0.3] * 4}, monkeypatch)
    assert main(["compare", run, other]) == 2
    # (MLflow's own INFO lines about creating the test database may precede it)
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hmsa compare:")]
    assert "--setting" in err and "avgpool:0.5,1" in err
    assert main(["compare", run, other, "--setting", "single:1"]) == 0
    capsys.readouterr()
    assert main(["compare", "no_such_stage", other]) == 2
    assert "no_such_stage" in capsys.readouterr().err
