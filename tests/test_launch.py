"""The launcher: cluster files are validated, a stage runs through submitit's local executor, and a
failing stage's error reaches the caller."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmsa.launch import ClusterConfigError, load_cluster, submit

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_cluster_file_loads() -> None:
    cluster = load_cluster(ROOT / "configs/cluster/local.yaml")
    assert cluster.executor == "local"
    assert cluster.resources("anything", "train")["timeout_min"] > 0


def test_cluster_file_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("executor: local\ndefaults: {gpus: 2}\n")
    with pytest.raises(ClusterConfigError, match=r"c\.yaml: unknown key 'defaults\.gpus'"):
        load_cluster(bad)
    bad.write_text("executor: kubernetes\n")
    with pytest.raises(ClusterConfigError, match="executor"):
        load_cluster(bad)


def test_precedence_defaults_kind_stage(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("executor: local\ndefaults: {timeout_min: 5, cpus_per_task: 1}\n"
                 "kinds: {train: {timeout_min: 50}}\nstages: {teacher: {timeout_min: 500}}\n")
    c = load_cluster(f)
    assert c.resources("x", "evaluate")["timeout_min"] == 5
    assert c.resources("x", "train")["timeout_min"] == 50
    assert c.resources("teacher", "train") == {"timeout_min": 500, "cpus_per_task": 1}


def test_submit_runs_a_stage_and_records_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_INVOCATION_ID", "inv-test")
    code = submit("demo", "train", tmp_path / "run", ROOT / "configs/cluster/local.yaml",
                  ["track", "--invocation", "other", "--experiment", "scratch"])
    assert code == 0
    assert (tmp_path / "run" / "job.json").exists()
    assert (tmp_path / "run" / "mlflow_run.json").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("hmsa").experiment_id])
    stage = [r for r in runs if r.data.tags.get("hmsa.stage") == "demo"]
    parent = [r for r in runs if r.data.tags.get("hmsa.invocation") == "inv-test"]
    assert len(stage) == 1 and stage[0].info.status == "FINISHED"
    assert stage[0].data.tags["mlflow.parentRunId"] == parent[0].info.run_id


def test_failing_stage_returns_nonzero_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_TRACKING", "0")
    code = submit("broken", "train", tmp_path / "run", ROOT / "configs/cluster/local.yaml",
                  ["train", "--config", str(tmp_path / "missing.yaml"), "--run-dir", str(tmp_path / "r")])
    assert code == 1
    err = capsys.readouterr().err
    assert "stage broken failed" in err and "missing.yaml" in err
