"""MLflow tracking against a real ``mlflow server`` on 127.0.0.1: one parent per invocation, one child
per stage with the provenance tags and the per-class table, read back through the REST API; and a
server stopped and restarted in the middle of a stage loses nothing and fails nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mlflow_server import Server, tags

from hmsa import config, tracking
from hmsa import tracking_buffer as wal

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/experiments/tiny.yaml"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = Server(tmp_path_factory.mktemp("mlflow-server"))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def tracked(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.chdir(tmp_path)  # .hmsa/invocations and .hmsa/tracking are relative to the workdir
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, f"exp-{tmp_path.name}")
    monkeypatch.setenv("HMSA_TRACKING_FINISH_WAIT_SECONDS", "0")
    return server


def _job_env(monkeypatch: pytest.MonkeyPatch, run_id: str, run_dir: Path, job: str) -> None:
    """What `hmsa submit` hands a stage's job."""
    monkeypatch.setenv(tracking.ENV_RUN_ID, run_id)
    monkeypatch.setenv(tracking.ENV_RUN_DIR, str(run_dir))
    monkeypatch.setenv("HMSA_SLURM_JOB_ID", job)


@pytest.mark.slow  # an mlflow server takes ~20 s to start on 2 busy cores
def test_parent_children_tags_and_table_via_rest(tracked: Server, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import hmsa.versioning
    from hmsa.evaluation.evaluate import _log_to_mlflow

    monkeypatch.setattr(hmsa.versioning, "data_version", lambda p: f"md5-of-{Path(p).name}")
    exp = tracking.ensure_experiment(f"exp-{tmp_path.name}")
    parent = tracking.get_or_create_parent("inv-1", exp, {})
    assert tracking.get_or_create_parent("inv-1", exp, {}) == parent  # a second stage finds it
    cfg = config.load(TINY, [f"data.root={tmp_path / 'data'}"])
    train = tracking.create_stage_run("teacher", exp, parent, {"hmsa.git_commit": tracking.git_commit()})
    evaluation = tracking.create_stage_run("evaluate_student", exp, parent, {"hmsa.paper_rows": "table3:0"})

    _job_env(monkeypatch, train, tmp_path / "runs/teacher", "4242")
    tracking.stage_provenance(cfg, [cfg.data.root])
    t = tracking.StageTracker.from_env()
    for step in range(1, 4):
        t.log_metrics({"loss/total": 1.0 / step}, step=step)
    t.close()
    tracking.finish_run(train, "FINISHED", tmp_path / "runs/teacher")

    _job_env(monkeypatch, evaluation, tmp_path / "runs/evaluate_student", "4243")
    tracking.stage_provenance(cfg, [cfg.data.root, tmp_path / "model.pt"])
    names = ["road", "sidewalk", "building"]
    setting = {"method": "hierarchical", "scales": [0.5, 1.0], "flip": False, "miou": 0.5,
               "pixel_accuracy": 0.8, "per_class": {"road": 0.9, "sidewalk": 0.25, "building": None}}
    metrics = {"dataset": "cityscapes", "split": "val", "images": 2, "model": "m.pt",
               "settings": {"hierarchical_0.5-1": setting}}
    _log_to_mlflow(metrics, names, tmp_path)
    _log_to_mlflow(metrics, names, tmp_path)  # a resumed evaluation logs again: replaced, not appended
    tracking.finish_run(evaluation, "FINISHED", tmp_path / "runs/evaluate_student")

    (p,) = tracked.search(exp, "tags.`hmsa.kind` = 'pipeline'")
    assert p["info"]["run_id"] == parent and tags(p)["hmsa.invocation"] == "inv-1"
    children = {tags(r)["hmsa.stage"]: r for r in tracked.search(exp, f"tags.mlflow.parentRunId = '{parent}'")}
    assert set(children) == {"teacher", "evaluate_student"}
    for stage, job in (("teacher", "4242"), ("evaluate_student", "4243")):
        r = children[stage]
        assert r["info"]["status"] == "FINISHED"
        tg = tags(r)
        assert tg["hmsa.slurm_job_id"] == job
        assert tg["hmsa.config_hash"] == config.config_hash(cfg)
        assert tg["hmsa.git_commit"] == tracking.git_commit() != ""
        assert tg["hmsa.data_version"].startswith("md5-of-data")
        # the resolved config is an artifact, and it round-trips
        assert yaml.safe_load(tracked.artifact(r, "config.yaml")) == config.to_dict(cfg)
    assert tags(children["evaluate_student"])["hmsa.paper_rows"] == "table3:0"
    assert tags(children["evaluate_student"])["hmsa.data_version"] == "md5-of-data,md5-of-model.pt"
    steps = [m["step"] for m in tracked.history(train, "loss/total")]
    assert sorted(steps) == [1, 2, 3]

    table = json.loads(tracked.artifact(children["evaluate_student"], "per_class/hierarchical_0.5-1.json"))
    assert table["columns"] == ["class", "iou"]
    assert table["data"] == [["road", 0.9], ["sidewalk", 0.25], ["building", None]]
    logged = json.loads(tags(children["evaluate_student"])["mlflow.loggedArtifacts"])
    assert {"path": "per_class/hierarchical_0.5-1.json", "type": "table"} in logged


@pytest.mark.slow  # an mlflow server takes ~20 s to start on 2 busy cores
def test_outage_mid_stage_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = Server(tmp_path / "server")
    srv.start()
    try:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.url)
        monkeypatch.setenv("HMSA_TRACKING_RETRY_SECONDS", "1")
        exp = tracking.ensure_experiment("outage")
        run = tracking.create_stage_run("train", exp, None, {})
        run_dir = tmp_path / "runs/train"
        _job_env(monkeypatch, run, run_dir, "7")
        t = tracking.StageTracker.from_env()
        for step in range(0, 5):
            t.log_metrics({"loss": float(step)}, step=step)
        assert wal.pending(t.wal) == 0  # sent as it went

        srv.stop()
        t0 = time.monotonic()
        for step in range(5, 10):
            t.log_metrics({"loss": float(step)}, step=step)  # must not raise
        t.set_tags({"during": "outage"})
        t.log_params({"lr": 0.01})
        t.log_table({"class": ["a", "b"], "iou": [0.5, 0.75]}, "per_class/x.json")
        down_seconds = time.monotonic() - t0
        assert wal.pending(t.wal) > 0
        assert down_seconds < 60, f"a dead server stalled the stage for {down_seconds:.0f} s"

        srv.start()
        time.sleep(1.1)  # past the retry interval: the next call sends the backlog
        t.log_metrics({"loss": 10.0}, step=10)
        assert wal.pending(t.wal) == 0
        for step in range(11, 15):
            t.log_metrics({"loss": float(step)}, step=step)
        t.close()
        assert tracking.finish_run(run, "FINISHED", run_dir)

        history = srv.history(run, "loss")
        assert sorted((m["step"], m["value"]) for m in history) == [(s, float(s)) for s in range(15)]
        r = srv.get("runs/get", run_id=run)["run"]
        assert tags(r)["during"] == "outage" and tags(r)["hmsa.slurm_job_id"] == "7"
        assert {p["key"]: p["value"] for p in r["data"]["params"]}["lr"] == "0.01"
        assert r["info"]["status"] == "FINISHED"
        assert json.loads(srv.artifact(r, "per_class/x.json"))["data"] == [["a", 0.5], ["b", 0.75]]
    finally:
        srv.stop()


def test_stage_end_while_down_is_sent_by_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server is down when the job and `hmsa submit` end: `hmsa track --sync` sends it all later."""
    from mlflow.tracking import MlflowClient

    from hmsa.cli import main

    monkeypatch.chdir(tmp_path)
    client = MlflowClient()  # the conftest's SQLite store
    exp = tracking.ensure_experiment("sync")
    run = tracking.create_stage_run("evaluate", exp, None, {})
    db = tmp_path / "mlflow.db"  # the conftest's store
    _job_env(monkeypatch, run, tmp_path / "runs/evaluate", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the server is down (nothing on port 9)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("HMSA_TRACKING_FINISH_WAIT_SECONDS", "1")
    t = tracking.StageTracker.from_env()
    t.log_metrics({"miou": 0.5}, step=3)
    t.close()
    assert not tracking.finish_run(run, "FINISHED", tmp_path / "runs/evaluate")
    assert client.get_run(run).info.status == "RUNNING" and not client.get_run(run).data.metrics

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")  # the server is back
    assert main(["track", "--sync", str(tmp_path / "runs")]) == 0
    r = client.get_run(run)
    assert r.info.status == "FINISHED" and r.data.metrics == {"miou": 0.5}
    assert main(["track", "--sync", str(tmp_path / "runs")]) == 0  # nothing left: a no-op


def test_a_line_cut_by_a_kill_is_skipped_and_a_rejected_op_does_not_block(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = tracking.ensure_experiment("wal")
    run = client.create_run(exp).info.run_id
    path = wal.wal_path(tmp_path, run)
    wal.append(path, {"op": "params", "p": {"a": "1"}})
    with open(path, "ab") as fh:
        fh.write(b'{"op":"metrics","m":[["x",1.0,0,')  # the job was killed here
    wal.append(path, {"op": "metrics", "m": [["x", 2.0, 0, 2]]})
    wal.append(path, {"op": "metrics", "m": [["bad key?!", float("nan"), 0, 1], ["y", 1.0, 0, 1]]})
    wal.append(path, {"op": "tags", "t": {"after": "yes"}})
    assert wal.flush(path, client, run)
    r = client.get_run(run)
    assert r.data.params == {"a": "1"} and r.data.tags["after"] == "yes"
    assert [m.value for m in client.get_metric_history(run, "x")] == [2.0]
    assert wal.pending(path) == 0
