"""Concurrency of issue #15: two ``hmsa train`` on one run dir mixed their records. A run dir is held
by one process at a time (``hmsa.orchestration.runlock``, a lock file that works across the hosts of a shared file
system); the second gets one line naming the holder. A lock left by a killed process of this host, or
by the same SLURM job before its requeue, does not block the resume."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hmsa.orchestration import runlock
from tests.faults.cases import TINY, Case, check, run

TRAIN = ["train", "--config", str(TINY), "--run-dir", "{tmp}/run", "--out-model", "{tmp}/run.pt",
         "data.root={data}/cityscapes"]
# The second process must not have touched the run dir: no resolved config, no model, no checkpoint.
UNTOUCHED = ("{tmp}/run/config.yaml", "{tmp}/run.pt", "{tmp}/run/checkpoints")


def holder(host: str, pid: int, **extra: str) -> Callable[[Path], None]:
    """A setup writing ``{tmp}/run/.lock`` as if ``pid`` on ``host`` held the run dir."""

    def setup(tmp: Path) -> None:
        (tmp / "run").mkdir(parents=True, exist_ok=True)
        start = runlock._start_ticks(pid) if host == socket.gethostname() else "4242"
        lock = {"host": host, "pid": pid, "start": start, "boot": runlock._boot_id() if start != "4242" else "b",
                "slurm_job": "", "slurm_restart": "0", "since": "2026-01-01 00:00:00", **extra}
        (tmp / "run" / runlock.LOCK).write_text(json.dumps(lock))

    return setup


HERE = socket.gethostname()
CASES = [
    # this test process stands for the first `hmsa train`: alive, on this host
    Case("a second train on a run dir held on this host", TRAIN, names=f"pid {os.getpid()} on host {HERE}",
         setup=holder(HERE, os.getpid()), unfinished=UNTOUCHED),
    Case("a second train on a run dir held by another host", TRAIN, names="on host node-b",
         setup=holder("node-b", 4242), unfinished=UNTOUCHED),
    Case("a run dir held by another host's SLURM job", TRAIN, names="SLURM job 777",
         setup=holder("node-b", 4242, slurm_job="777"), unfinished=UNTOUCHED),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_lock_of_a_dead_process_of_this_host_is_taken_over(data: Path, tmp_path: Path) -> None:
    """What kill -9 leaves: the resume (or a fresh run) proceeds, and releases the lock when done."""
    holder(HERE, _dead_pid())(tmp_path)
    out = run(Case("train", [*TRAIN, "train.iterations=1"], names=""), tmp_path, data)
    assert out.code == 0, out.stderr
    assert (tmp_path / "run.pt").is_file() and not (tmp_path / "run" / runlock.LOCK).exists()


def test_a_recycled_pid_is_not_the_holder(tmp_path: Path) -> None:
    """Same host, the pid alive, but a process that started at another time: the holder is gone."""
    holder(HERE, os.getpid(), start="1")(tmp_path)
    mine = runlock.acquire(tmp_path / "run")
    assert mine["pid"] == os.getpid()
    runlock.release(tmp_path / "run", mine)
    assert not (tmp_path / "run" / runlock.LOCK).exists()


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM keeps the job id across a requeue and may restart it on another node."""
    holder("node-b", 4242, slurm_job="777", slurm_restart="0")(tmp_path)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same incarnation: another node's live process
    with pytest.raises(runlock.RunDirBusy, match="node-b"):
        runlock.acquire(tmp_path / "run")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert runlock.acquire(tmp_path / "run")["slurm_restart"] == "1"


def test_lock_released_when_training_fails(data: Path, tmp_path: Path) -> None:
    out = run(Case("train", [*TRAIN, "model.init={tmp}/nowhere.pt"], names=""), tmp_path, data)
    assert out.code == 2 and "nowhere.pt" in out.stderr
    assert not (tmp_path / "run" / runlock.LOCK).exists()


def _race(run_dir: str, start: float, results: multiprocessing.Queue) -> None:
    time.sleep(max(0.0, start - time.time()))
    try:
        runlock.acquire(Path(run_dir))
        results.put("won")
    except runlock.RunDirBusy:
        results.put("refused")


def test_processes_racing_for_a_stale_lock_one_wins(tmp_path: Path) -> None:
    """Several processes find the same stale lock at once: exactly one takes it over."""
    holder(HERE, _dead_pid())(tmp_path)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(str(tmp_path / "run"), start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["refused", "refused", "refused", "won"]


@pytest.mark.slow
def test_two_real_trains_then_kill_9(data: Path, tmp_path: Path) -> None:
    """Two real processes: the second is refused in one line naming the first; after the first is
    killed with SIGKILL, its stale lock does not block the next run in the dir."""
    args = [a.replace("{tmp}", str(tmp_path)).replace("{data}", str(data)) for a in TRAIN[1:]]
    env = {**os.environ, "HMSA_TRACKING": "0"}
    first = subprocess.Popen([sys.executable, "-m", "hmsa", "train", *args, "train.iterations=400",
                              "train.checkpoint_every=1"], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        last = tmp_path / "run/checkpoints/last.pt"
        deadline = time.monotonic() + 600
        while not last.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, "the first training ended before the second started"
        second = run(Case("second", [*TRAIN, "train.iterations=400", "train.checkpoint_every=1"], names=""),
                     tmp_path, data)
        assert second.kind == "one-line" and f"pid {first.pid} on host {HERE}" in second.stderr, second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # the killed process's lock is stale: the next run in this dir proceeds (a shorter one here; the
    # bit-exact resume after kill -9 is tests/test_preempt.py's, through the same lock)
    assert (tmp_path / "run" / ".lock").exists()
    after = run(Case("after the kill", [*TRAIN, "train.iterations=1"], names=""), tmp_path, data)
    assert after.code == 0, after.stderr
    assert not (tmp_path / "run" / ".lock").exists()
