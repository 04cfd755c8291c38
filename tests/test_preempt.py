"""Preemption: another thread sets ``loop.STOP_REQUESTED`` mid-training (as submitit's ``checkpoint()``
does); the loop saves ``last.pt`` at the next iteration boundary and raises ``Preempted``; a resumed run
ends with the weights of an uninterrupted one, bit for bit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from hmsa import config
from hmsa.training import checkpoint, loop
from hmsa.training import state as train_state

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs/experiments/tiny.yaml"


def test_stop_request_saves_and_resume_is_bit_exact(embedded_data: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # No periodic checkpoint before the end: the file after the stop can only come from the stop.
    cfg = config.load(TINY, [f"data.root={embedded_data / 'cityscapes'}", "train.checkpoint_every=100"])
    loop.run_training(cfg, tmp_path / "straight", tmp_path / "straight.pt")
    real, calls = loop.total_loss, {"n": 0}
    in_iteration_2 = threading.Event()

    def loss_that_waits_for_the_request(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # iteration 2 (1-based) is running: let the other thread ask, then go on
            in_iteration_2.set()
            assert loop.STOP_REQUESTED.wait(timeout=30)
        return real(*args, **kwargs)

    def preempt() -> None:
        in_iteration_2.wait(timeout=60)
        loop.STOP_REQUESTED.set()

    monkeypatch.setattr(loop, "total_loss", loss_that_waits_for_the_request)
    signaller = threading.Thread(target=preempt)
    signaller.start()
    try:
        with pytest.raises(loop.Preempted) as stopped:
            loop.run_training(cfg, tmp_path / "run", tmp_path / "run.pt")
    finally:
        signaller.join()
        loop.STOP_REQUESTED.clear()
    assert stopped.value.iteration == 2 and calls["n"] == 2  # stopped at the boundary, no step more
    assert not loop.STOP_REQUESTED.is_set()  # consumed by the loop
    assert not (tmp_path / "run.pt").exists()  # nothing that looks like a finished model
    saved = torch.load(checkpoint.last_path(tmp_path / "run"), weights_only=True)
    assert saved["iteration"] == 2 and set(saved) == set(train_state.KEYS)
    monkeypatch.setattr(loop, "total_loss", real)
    result = loop.run_training(cfg, tmp_path / "run", tmp_path / "run.pt")
    assert result["resumed_from"] == 2
    assert result["mlflow_run_id"] == saved["mlflow_run_id"] != ""  # the resumed run logs where it left off
    a, _ = checkpoint.load_model_file(tmp_path / "straight.pt")
    b, _ = checkpoint.load_model_file(tmp_path / "run.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The resume was needed: the stopped checkpoint's weights are not the final ones.
    assert not all(torch.equal(saved["model"][k], a[k]) for k in a)


def test_a_request_after_the_last_iteration_does_not_stop_a_finished_run(embedded_data: Path,
                                                                          tmp_path: Path) -> None:
    cfg = config.load(TINY, [f"data.root={embedded_data / 'cityscapes'}", "train.iterations=1"])
    loop.STOP_REQUESTED.set()
    try:
        result = loop.run_training(cfg, tmp_path / "run", tmp_path / "m.pt")
    finally:
        loop.STOP_REQUESTED.clear()
    assert result["iterations"] == 1 and (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_then_resume_is_bit_exact(embedded_data: Path, tmp_path: Path) -> None:
    """A real ``hmsa train`` process killed with SIGKILL once ``last.pt`` exists (issue #4's test)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [f"data.root={embedded_data / 'cityscapes'}", "train.iterations=12"]
    cfg = config.load(TINY, args)
    loop.run_training(cfg, tmp_path / "straight", tmp_path / "straight.pt")
    # Same thread count as this process: float reductions may depend on it.
    env = {**os.environ, "HMSA_TRACKING": "0", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "hmsa", "train", "--config", str(TINY), "--run-dir", str(tmp_path / "run"),
           "--out-model", str(tmp_path / "run.pt"), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = checkpoint.last_path(tmp_path / "run")
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed, not finished
    killed_at = torch.load(last, weights_only=True)["iteration"]
    assert 0 < killed_at < 12 and not (tmp_path / "run.pt").exists()
    result = loop.run_training(cfg, tmp_path / "run", tmp_path / "run.pt")
    assert result["resumed_from"] == killed_at
    a, _ = checkpoint.load_model_file(tmp_path / "straight.pt")
    b, _ = checkpoint.load_model_file(tmp_path / "run.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
