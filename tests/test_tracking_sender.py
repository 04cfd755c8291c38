"""The detached MLflow sender: stages through `hmsa submit` are tracked without the job (or `hmsa submit`)
importing MLflow; one warm sender serves consecutive stages and invocations, then exits; a finished
stage gets a new run, an unfinished one is continued; without a sender `hmsa submit` sends itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hmsa import tracking
from hmsa.orchestration.launch import submit
from hmsa.tracking import sender

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "configs/cluster/local.yaml"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HMSA_TRACKING", "1")
    monkeypatch.setenv(tracking.ENV_EXPERIMENT, "sender-test")
    monkeypatch.setenv("HMSA_TRACKING_SENDER_IDLE_SECONDS", "20")
    return tmp_path


def _stage_runs(stage: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("sender-test")
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("hmsa.stage") == stage]


def _sender_pids(where: Path) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"hmsa.tracking.sender {where}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_job_that_logs_never_imports_mlflow(tmp_path: Path) -> None:
    """A tracker of the folder `hmsa submit` sends only appends: metrics, tags, a nested run, close."""
    folder = tracking.buffer_dir(tmp_path / "run")
    code = (
        "import sys\n"
        "from hmsa import tracking\n"
        "t = tracking.StageTracker.from_env()\n"
        "assert t.deferred, 'not deferred'\n"
        "t.log_metrics({'loss': 1.0}, step=1); t.set_tags({'a': 'b'})\n"
        "c = t.child('s', 'stage . s', {}); c.log_metrics({'miou': 5.0}); c.finish()\n"
        "c.flush(wait=0.0); t.close()\n"
        "print(sorted(m for m in sys.modules if m == 'mlflow' or m.startswith('mlflow.')))\n")
    env = {**os.environ, tracking.ENV_RUN_ID: "pending-abc", tracking.ENV_RUN_DIR: str(tmp_path / "run"),
           tracking.ENV_SENDER: str(folder), "HMSA_TRACKING": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    ops = [json.loads(line)["op"] for line in (folder / "pending-abc.jsonl").read_text().splitlines()]
    assert ops == ["status", "metrics", "tags"]  # the stage run: reopened, then what the job logged
    assert [json.loads(line)["op"] for line in (folder / "pending-abc.s.jsonl").read_text().splitlines()] == \
        ["create", "metrics", "terminate"]


def test_one_warm_sender_tracks_consecutive_stages_and_invocations(workdir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    where = sender.home()
    senders = []
    for i, name in enumerate(["first", "second"]):
        monkeypatch.setenv(tracking.ENV_INVOCATION, f"inv-{i}")
        monkeypatch.setenv(tracking.ENV_PIPELINE_CONFIG, json.dumps({"name": f"pipe{i}", "seed": i}))
        assert submit(name, "prepare", workdir / "runs" / name, LOCAL, ["track"]) == 0
        senders.append(_sender_pids(where))
        record = json.loads((workdir / "runs" / name / "mlflow_run.json").read_text())
        assert record["status"] == "FINISHED" and not record["run_id"].startswith(tracking.PENDING)
        assert record["experiment_id"]
        (run,) = _stage_runs(name)
        assert run.info.run_id == record["run_id"] and run.info.status == "FINISHED"
        from mlflow.tracking import MlflowClient

        parent = MlflowClient().get_run(run.data.tags["mlflow.parentRunId"])
        # each invocation's parent gets its own pipeline config, though one sender created both
        assert parent.data.tags["hmsa.invocation"] == f"inv-{i}" and parent.data.params["seed"] == str(i)
    assert len(senders[0]) == 1 and senders[1] == senders[0]  # the second stage found the first's sender
    assert not list((where / "outbox").glob("*.json"))  # both stages sent: nothing registered
    deadline = time.monotonic() + 60
    while _sender_pids(where) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _sender_pids(where)  # idle: it exits


def test_a_finished_stage_gets_a_new_run_an_unfinished_one_continues(workdir: Path) -> None:
    run_dir = workdir / "runs/demo"
    assert submit("demo", "prepare", run_dir, LOCAL, ["track"]) == 0
    first = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert submit("demo", "prepare", run_dir, LOCAL, ["track"]) == 0  # run again after it finished
    second = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    assert second != first
    # `hmsa submit` killed during the job: the record still says RUNNING, the next attempt continues
    (run_dir / "mlflow_run.json").write_text(json.dumps({"run_id": second, "status": "RUNNING"}))
    assert submit("demo", "prepare", run_dir, LOCAL, ["track"]) == 0
    assert json.loads((run_dir / "mlflow_run.json").read_text())["run_id"] == second
    assert sorted(r.info.run_id for r in _stage_runs("demo")) == sorted([first, second])
    assert all(r.info.status == "FINISHED" for r in _stage_runs("demo"))


def test_without_a_sender_submit_sends_itself(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender, "ensure_running", lambda where: None)  # e.g. it could not start
    monkeypatch.setenv("HMSA_TRACKING_FINISH_WAIT_SECONDS", "1")
    assert submit("alone", "prepare", workdir / "runs/alone", LOCAL, ["track"]) == 0
    (run,) = _stage_runs("alone")
    assert run.info.status == "FINISHED"
    assert json.loads((workdir / "runs/alone/mlflow_run.json").read_text())["run_id"] == run.info.run_id


def test_processes_opening_a_fresh_database_store_at_once_all_succeed(tmp_path: Path) -> None:
    """The sender and a job may be the first two users of a new sqlite store; creating its tables twice
    at once fails in alembic unless `tracking.mlflow_client` serialises the first opening."""
    code = "from hmsa import tracking; tracking.mlflow_client().search_experiments(max_results=1)"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh.db'}",
           "HMSA_LOCK_DIR": str(tmp_path / "locks")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _ in results), [err[-500:] for code, err in results if code]
