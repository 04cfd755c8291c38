"""MLflow tracking against a real ``mlflow server`` on 127.0.0.1: one parent per invocation, one child
per stage with the provenance tags and the per-class table, read back through the REST API; and a
server stopped and restarted in the middle of a stage loses nothing and fails nothing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from mlflow_server import Server, tags

from hmsa import config, tracking
from hmsa.tracking import buffer as wal
from hmsa.tracking.parent import ENV_SNAKEMAKE_PID, get_or_create_parent, log_parent_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/experiments/tiny.yaml"


@pytest.fixture
def tracked(mlflow_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    monkeypatch.chdir(tmp_path)  # .hmsa/invocations and .hmsa/tracking are relative to the workdir
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, f"exp-{tmp_path.name}")
    monkeypatch.setenv("HMSA_TRACKING_FINISH_WAIT_SECONDS", "0")
    return mlflow_server


def _job_env(monkeypatch: pytest.MonkeyPatch, run_id: str, run_dir: Path, job: str) -> None:
    """What `hmsa submit` hands a stage's job."""
    monkeypatch.setenv(tracking.ENV_RUN_ID, run_id)
    monkeypatch.setenv(tracking.ENV_RUN_DIR, str(run_dir))
    monkeypatch.setenv("HMSA_SLURM_JOB_ID", job)


@pytest.mark.slow  # an mlflow server takes ~20 s to start on 2 busy cores
def test_parent_children_tags_and_table_via_rest(tracked: Server, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import hmsa.orchestration.versioning
    from hmsa.evaluation.evaluate import _log_to_mlflow

    monkeypatch.setattr(hmsa.orchestration.versioning, "data_version", lambda p: f"md5-of-{Path(p).name}")
    monkeypatch.setattr(hmsa.orchestration.versioning, "dataset_version", lambda p: f"dvc-of-{Path(p).name}")
    exp = tracking.ensure_experiment(f"exp-{tmp_path.name}")
    parent = get_or_create_parent("inv-1", exp, {})
    assert get_or_create_parent("inv-1", exp, {}) == parent  # a second stage finds it
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
        assert tg["mlflow.source.git.commit"] == tracking.git_commit().removesuffix("-dirty")
        assert tg["hmsa.data_version"] == "dvc-of-data"  # the dataset's version, not a model's hash
        assert "hmsa.local_job_id" not in tg
        # the resolved config is an artifact, and it round-trips
        assert yaml.safe_load(tracked.artifact(r, "config.yaml")) == config.to_dict(cfg)
    assert tags(children["evaluate_student"])["hmsa.paper_rows"] == "table3:0"
    assert tags(children["evaluate_student"])["hmsa.input_versions"] == "model.pt=md5-of-model.pt"
    assert "hmsa.input_versions" not in tags(children["teacher"])  # no model input, no data of its own
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
    srv.start(timeout=900)
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

        srv.start(timeout=900)
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


def _stage_env(monkeypatch: pytest.MonkeyPatch, run_id: str, run_dir: Path, stage: str, tags: dict) -> None:
    """What `hmsa submit` hands an evaluation job on the local executor."""
    monkeypatch.setenv(tracking.ENV_RUN_ID, run_id)
    monkeypatch.setenv(tracking.ENV_RUN_DIR, str(run_dir))
    monkeypatch.setenv(tracking.ENV_STAGE, stage)
    monkeypatch.setenv(tracking.ENV_STAGE_TAGS, json.dumps(tags))
    monkeypatch.setenv(tracking.ENV_LOCAL_JOB, "31337")
    monkeypatch.delenv(tracking.ENV_SLURM_JOB, raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def _setting(method: str, miou: float, per_class: dict) -> dict:
    return {"method": method, "scales": [0.5, 1.0], "flip": method == "avgpool", "miou": miou,
            "pixel_accuracy": 0.81234, "per_class": per_class}


def test_each_setting_is_a_nested_run_with_the_same_metric_names(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from hmsa.evaluation.evaluate import _log_to_mlflow

    monkeypatch.chdir(tmp_path)
    client = MlflowClient()
    exp = tracking.ensure_experiment("nested")
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    train = tracking.create_stage_run("teacher", exp, None, {})
    model = tmp_path / "results/teacher/model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    (model.parent / "train.json").write_text(json.dumps({"mlflow_run_id": train}))
    stage = tracking.create_stage_run("evaluate_teacher", exp, None, {"hmsa.paper_rows": "table2:1"})
    _stage_env(monkeypatch, stage, tmp_path / "runs/evaluate_teacher", "evaluate_teacher",
               {"hmsa.paper_rows": "table2:1"})
    names = ["road", "Traffic sign (back)", "sky"]
    metrics = {"dataset": "cityscapes", "split": "val", "images": 3, "model": str(model), "settings": {
        "hierarchical_0.5-1": _setting("hierarchical", 0.123456, {"road": 0.9, "Traffic sign (back)": 0.25,
                                                                  "sky": None}),
        "avgpool_0.5-1_flip": _setting("avgpool", 0.5, {"road": 0.5, "Traffic sign (back)": 0.0, "sky": 0.75})}}
    data = tmp_path / "data/cityscapes"
    data.mkdir(parents=True)
    _log_to_mlflow(metrics, names, tmp_path / "results/evaluate_teacher", data)
    _log_to_mlflow(json.loads(json.dumps(metrics)), names, tmp_path / "results/evaluate_teacher", data)  # resumed

    kids = client.search_runs([exp], f"tags.mlflow.parentRunId = '{stage}'")
    assert len(kids) == 2, "a second logging of the same evaluation must not add runs"
    by_name = {r.info.run_name: r for r in kids}
    assert set(by_name) == {"evaluate_teacher · hierarchical:0.5,1", "evaluate_teacher · avgpool:0.5,1:flip"}
    hier, avg = by_name["evaluate_teacher · hierarchical:0.5,1"], by_name["evaluate_teacher · avgpool:0.5,1:flip"]
    assert hier.data.metrics == {"miou": 12.35, "pixel_accuracy": 81.23, "images": 3.0, "iou/road": 90.0,
                                 "iou/Traffic sign _back_": 25.0}  # sky has no IoU there: no metric, not 0
    assert set(avg.data.metrics) == set(hier.data.metrics) | {"iou/sky"}
    assert hier.data.params["eval.method"] == "hierarchical" and avg.data.params["eval.flip"] == "true"
    assert hier.data.params["eval.scales"] == "0.5,1" and hier.data.params["eval.flip"] == "false"
    for run in kids:
        t = run.data.tags
        assert run.info.status == "FINISHED"
        assert t["hmsa.train_run_id"] == run.data.params["train.run_id"] == train
        assert f"#/runs/{train}" in t["mlflow.note.content"] and "table2:1" in t["mlflow.note.content"]
        assert t["hmsa.paper_rows"] == "table2:1" and t["hmsa.local_job_id"] == "31337"
        assert "hmsa.slurm_job_id" not in t
        assert t["mlflow.source.git.commit"] == tracking.git_commit().removesuffix("-dirty")
        assert t["hmsa.data_version"] == "unversioned"  # no DVC here: never a wrong hash
        (inp,) = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert (inp.dataset.name, inp.dataset.digest) == ("cityscapes-val", "unversioned")
        assert {x.key: x.value for x in inp.tags}["mlflow.data.context"] == "evaluation"
        assert metrics["settings"][t["hmsa.child_key"]]["mlflow_run_id"] == run.info.run_id
    found = client.search_runs([exp], "metrics.miou > 0")
    assert {r.info.run_id for r in found} == {r.info.run_id for r in kids}
    # the stage run keeps what it had
    assert client.get_run(stage).data.metrics["miou/hierarchical_0.5-1"] == pytest.approx(0.123456)


def test_a_nested_run_made_during_an_outage_is_created_once_later(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from hmsa.cli import main

    monkeypatch.chdir(tmp_path)
    client = MlflowClient()
    db_uri = os.environ["MLFLOW_TRACKING_URI"]
    exp = tracking.ensure_experiment("nested-outage")
    stage = tracking.create_stage_run("evaluate", exp, None, {})
    _job_env(monkeypatch, stage, tmp_path / "runs/evaluate", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("HMSA_TRACKING_FINISH_WAIT_SECONDS", "0")
    t = tracking.StageTracker.from_env()
    child = t.child("single_1", "evaluate · single:1", {"hmsa.kind": "evaluation"})
    child.log_metrics({"miou": 42.0})
    child.finish()
    child.close()
    assert child.run_id == "" and wal.pending(child.wal) > 0  # nothing failed, nothing sent

    monkeypatch.setenv("MLFLOW_TRACKING_URI", db_uri)
    assert main(["track", "--sync", str(tmp_path / "runs")]) == 0
    (kid,) = client.search_runs([exp], f"tags.mlflow.parentRunId = '{stage}'")
    assert kid.info.run_name == "evaluate · single:1" and kid.data.metrics == {"miou": 42.0}
    assert kid.info.status == "FINISHED"
    again = tracking.StageTracker.from_env().child("single_1", "evaluate · single:1", {})
    again.flush()
    assert again.run_id == kid.info.run_id  # found by its key, not made twice
    assert len(client.search_runs([exp], f"tags.mlflow.parentRunId = '{stage}'")) == 1


def test_job_ids_are_named_for_their_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    from hmsa.tracking.tags import job_tags

    for var in (tracking.ENV_LOCAL_JOB, tracking.ENV_SLURM_JOB, "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    assert job_tags() == {}
    monkeypatch.setenv(tracking.ENV_LOCAL_JOB, "4711")
    assert job_tags() == {"hmsa.local_job_id": "4711"}
    monkeypatch.delenv(tracking.ENV_LOCAL_JOB)
    monkeypatch.setenv(tracking.ENV_SLURM_JOB, "12")
    assert job_tags() == {"hmsa.slurm_job_id": "12"}


def test_dataset_version_is_the_recorded_hash_or_none(tmp_path: Path) -> None:
    from hmsa.orchestration.versioning import dataset_version

    (tmp_path / ".dvc").mkdir()
    data = tmp_path / "data/embedded"
    (data / "cityscapes").mkdir(parents=True)
    (data / "cityscapes/a.png").write_bytes(b"12345")
    (data / "b.json").write_bytes(b"{}")
    assert dataset_version(data / "cityscapes") is None  # nothing recorded
    record = tmp_path / "versions/data/embedded.dvc"
    record.parent.mkdir(parents=True)
    record.write_text(yaml.safe_dump({"wdir": "../..", "outs": [
        {"md5": "0123456789abcdef0123456789abcdef.dir", "size": 7, "nfiles": 2, "path": "data/embedded"}]}))
    assert dataset_version(data) == "0123456789abcdef0123456789abcdef.dir"
    assert dataset_version(data / "cityscapes") == "0123456789abcdef0123456789abcdef.dir"  # inside it
    (data / "cityscapes/new.png").write_bytes(b"x")  # changed since it was recorded
    assert dataset_version(data / "cityscapes") is None
    assert dataset_version(tmp_path / "elsewhere") is None


def test_parent_run_carries_the_pipeline_config_and_summary_metrics(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    pipeline = {"name": "embedded", "tracking": {"experiment": "pipe"}, "evaluate": {"e1": {
        "settings": ["hierarchical:0.5,1"]}}}
    # Inline JSON, as the Snakefile sets it (a file path is read the same way)
    monkeypatch.setenv(tracking.ENV_PIPELINE_CONFIG, json.dumps(pipeline))
    monkeypatch.setenv(tracking.ENV_INVOCATION, "inv-p")
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, "pipe")
    assert log_parent_metrics({"table1/gain": 1.25, "table2/miou": 55.5})
    client = MlflowClient()
    (parent,) = client.search_runs([client.get_experiment_by_name("pipe").experiment_id],
                                   "tags.`hmsa.kind` = 'pipeline'")
    assert parent.data.metrics == {"table1/gain": 1.25, "table2/miou": 55.5}
    assert parent.data.params["name"] == "embedded" and parent.data.params["tracking.experiment"] == "pipe"
    assert json.loads(parent.data.params["evaluate.e1.settings"]) == ["hierarchical:0.5,1"]
    assert parent.info.run_name.startswith("embedded · ")
    monkeypatch.setenv("HMSA_TRACKING", "0")
    assert not log_parent_metrics({"x": 1.0})


def test_a_killed_invocation_s_runs_are_closed_by_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snakemake killed (no onerror): its parent and unfinished stage runs stay RUNNING until the next
    invocation on this host finds its process gone and marks them KILLED; a live one is left alone."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    exp = tracking.ensure_experiment("stale")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    monkeypatch.setenv(ENV_SNAKEMAKE_PID, dead)
    killed = get_or_create_parent("inv-killed", exp, {})
    stage = tracking.create_stage_run("teacher", exp, killed, {})
    done = tracking.create_stage_run("prepare", exp, killed, {})
    tracking.finish_run(done, "FINISHED")
    monkeypatch.setenv(ENV_SNAKEMAKE_PID, str(os.getpid()))  # alive: this test
    alive = get_or_create_parent("inv-alive", exp, {})
    client = MlflowClient()
    status = {r: client.get_run(r).info.status for r in (killed, stage, done, alive)}
    assert status == {killed: "KILLED", stage: "KILLED", done: "FINISHED", alive: "RUNNING"}
    assert client.get_run(stage).data.tags["hmsa.closed_because"] == "its pipeline invocation was killed"
    get_or_create_parent("inv-third", exp, {})
    assert client.get_run(alive).info.status == "RUNNING"  # its Snakemake still runs
