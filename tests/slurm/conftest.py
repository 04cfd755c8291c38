"""The `slurm` tests run against a real one-node SLURM cluster that this fixture brings up
(``tests/slurm/cluster.sh``: Debian's slurmctld/slurmd/slurmdbd, munge, MariaDB, on 127.0.0.1).

The ``multinode`` tests run against a cluster of two nodes in network namespaces
(``tests/slurm/multinode.sh``); both clusters can be up at once, each test picks its own by
``SLURM_CONF``.

They skip, with the reason, only where SLURM cannot be installed (not root / no apt-get); with
``HMSA_REQUIRE_SLURM=1`` (CI) that is a failure instead."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SCRIPT = HERE / "cluster.sh"
MULTINODE = HERE / "multinode.sh"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[dict[str, str]]:
    conf, already_up = _bring_up(SCRIPT)
    os.environ["SLURM_CONF"] = conf
    yield {"SLURM_CONF": conf}
    if not already_up:
        subprocess.run([str(SCRIPT), "down"], capture_output=True, timeout=300)


@pytest.fixture(scope="session")
def _multinode_session() -> Iterator[str]:
    conf, already_up = _bring_up(MULTINODE)
    yield conf
    if not already_up:
        subprocess.run([str(MULTINODE), "down"], env={**os.environ, "SLURM_CONF": conf}, capture_output=True,
                       timeout=300)


@pytest.fixture
def multinode_cluster(_multinode_session: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The two-node cluster, for this test only: the one-node fixture sets SLURM_CONF session-wide."""
    monkeypatch.setenv("SLURM_CONF", _multinode_session)
    return {"SLURM_CONF": _multinode_session}


def _bring_up(script: Path) -> tuple[str, bool]:
    """Run ``script up``; its SLURM_CONF, and whether it was up before (then the session leaves it up)."""
    env_line = subprocess.run([str(script), "env"], capture_output=True, text=True, check=True).stdout
    conf = env_line.strip().split("=", 1)[1]
    env = {**os.environ, "SLURM_CONF": conf}
    already_up = subprocess.run([str(script), "status"], capture_output=True, text=True, env=env).returncode == 0
    up = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=900, env=env)
    if up.returncode == 3:
        reason = up.stderr.strip().splitlines()[-1]
        if os.environ.get("HMSA_REQUIRE_SLURM") == "1":
            pytest.fail(f"HMSA_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    if up.returncode != 0:
        pytest.fail(f"tests/slurm/{script.name} up failed:\n{up.stdout}\n{up.stderr}")
    return conf, already_up


@pytest.fixture
def uid() -> str:
    """A suffix for stage names: the cluster's accounting outlives a test session."""
    import uuid

    return uuid.uuid4().hex[:6]


def cluster_file(tmp: Path, **stage_overrides: dict) -> Path:
    """A cluster file for the test cluster: small jobs on the `debug` partition."""
    import yaml

    data = {"executor": "slurm",
            "defaults": {"partition": "debug", "nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0,
                         "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 15, "max_requeue": 3},
            "stages": stage_overrides}
    path = tmp / "slurm-test.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sacct_jobs(name: str) -> list[dict[str, str]]:
    """Every job (allocation, not steps) of that name known to SLURM's accounting."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", "now-1days", "--name", name, "-o", "JobID,State"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    return [{"id": r[0], "state": r[1]} for r in rows]


def restarts(job_id: str) -> int:
    """How many times SLURM requeued the job (``scontrol show job``: Restarts=N)."""
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, check=True).stdout
    return int(out.split("Restarts=", 1)[1].split()[0])


def task_log(run: Path, job_id: str, task: int) -> str:
    """A submitit task's log, stdout then stderr (submitit writes ``<job>_<task>_log.{out,err}``)."""
    folder = run / "submitit" / job_id
    return "".join((folder / f"{job_id}_{task}_log.{ext}").read_text() for ext in ("out", "err"))


def handler_checkpointed(log: str) -> bool:
    """Whether submitit's signal handler caught the interrupt and called the job's checkpoint (which asks
    for the requeue). Its "Requeued job N" line is not always written after that: ``scontrol requeue``
    runs inside the job, and the SIGTERM SLURM then sends to the job's processes can kill it before it
    returns (seen once in a full suite: "Command '['scontrol', 'requeue', '89']' died with SIGTERM"), yet the
    job was requeued and resumed. That it was is checked by ``restarts`` and the run's ``resumed_from``."""
    return "Caught signal SIGUSR2" in log and "Calling checkpoint method" in log


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def wait_until(pred, timeout: float, what: str, interval: float = 0.5):  # type: ignore[no-untyped-def]
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
