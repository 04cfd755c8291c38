"""Start-up of a trivial stage through `hmsa submit` on the local executor: wall time from starting
`hmsa submit` to its exit, for a stage whose command does nothing (`hmsa track` with no arguments), with
MLflow tracking on as the pipeline runs it (experiment, the invocation's parent run, the stage's child
run, its end, all in the store when `hmsa submit` exits) in a temporary SQLite store, and
OMP_NUM_THREADS=1 as Snakemake sets it.

Stages send through one detached sender process (``hmsa.tracking.sender``), which the first tracked
stage starts: that stage also pays for importing MLflow there and for creating the database (MLflow's
schema migrations, once per store), so it is reported apart; the stages after it find the sender warm,
as every stage of a pipeline after the first does. The sender's own CPU time over the whole benchmark is
reported too (it is not a child of `hmsa submit`, so ``stage_cpu_seconds`` leaves it out). Also
measured: the same stage with tracking off, and what creating an MLflow client and asking it one thing
costs in a fresh process (what every stage paid before the sender). Target: a trivial stage <= 4 s.
Writes reports/benchmarks/stage_startup.json.

    .venv/bin/python benchmarks/stage_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import spread, write_result  # noqa: E402

HMSA = str(Path(sys.executable).parent / "hmsa")
CLIENT = "from mlflow.tracking import MlflowClient; MlflowClient().get_experiment_by_name('stage-startup')"


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (the process and every descendant it waited for)."""
    before = os.times()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def _stage(work: Path, env: dict[str, str], name: str) -> tuple[float, float]:
    return _timed([HMSA, "submit", "--stage", name, "--kind", "prepare", "--run-dir", str(work / "runs" / name),
                   "--cluster", str(ROOT / "configs/cluster/local.yaml"), "--", "track"], work, env)


def _sender_cpu(work: Path) -> float | None:
    """CPU seconds the detached sender of ``work`` has used so far (None if it is not running); it is
    stopped afterwards, as the temporary directory goes away."""
    found = subprocess.run(["pgrep", "-f", f"hmsa.tracking.sender {work}"], capture_output=True, text=True)
    total = None
    for pid in found.stdout.split():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total = (total or 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        os.kill(int(pid), 15)
    return None if total is None else round(total, 2)


def _check_tracked(db: Path, names: list[str]) -> None:
    """Every tracked stage left a FINISHED child run under the invocation's parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("stage-startup")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("hmsa.kind") == "pipeline"]
    stages = {r.data.tags.get("hmsa.stage"): r for r in runs if r.data.tags.get("hmsa.kind") == "stage"}
    assert len(parents) == 1, f"expected one parent run, found {len(parents)}"
    for name in names:
        r = stages[name]
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id, name


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another copy of the project (a directory holding hmsa/): its `hmsa submit` is timed "
                         "too, interleaved, e.g. the previous commit's")
    ap.add_argument("--baseline-label", default="", help="what the baseline is (written instead of its path)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/stage_startup.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hmsa-startup-"))
    db = work / "mlflow.db"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMSA_", "MLFLOW_"))}
    base.update(OMP_NUM_THREADS="1", HMSA_LOCK_DIR=str(work / "locks"), HMSA_LOG_LEVEL="WARNING")
    tracked = {**base, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "HMSA_MLFLOW_EXPERIMENT": "stage-startup",
               "HMSA_INVOCATION_ID": uuid.uuid4().hex}
    untracked = {**base, "HMSA_TRACKING": "0"}
    # The baseline's package comes first on the path of `hmsa submit` and of its job's processes.
    baseline = {**tracked, "PYTHONPATH": str(args.baseline.resolve())} if args.baseline else None

    load = [os.getloadavg()[0]]
    first, _ = _stage(work, tracked, "noop_first")  # creates the store
    names = ["noop_first"]
    on, on_cpu, off, off_cpu, client, bare, old, old_cpu = [], [], [], [], [], [], [], []
    for i in range(args.runs):  # interleaved, so that all see the same machine state
        wall, cpu = _stage(work, tracked, f"noop_{i}")
        names.append(f"noop_{i}")
        on.append(wall)
        on_cpu.append(cpu)
        if baseline is not None:
            wall, cpu = _stage(work, baseline, f"baseline_{i}")
            names.append(f"baseline_{i}")
            old.append(wall)
            old_cpu.append(cpu)
        wall, cpu = _stage(work, untracked, f"untracked_{i}")
        off.append(wall)
        off_cpu.append(cpu)
        client.append(_timed([sys.executable, "-c", CLIENT], work, tracked)[0])
        bare.append(_timed([sys.executable, "-c", "pass"], work, base)[0])
        load.append(os.getloadavg()[0])
    _check_tracked(db, names)
    sender = _sender_cpu(work)
    result = {
        "trivial_stage": "hmsa submit --stage noop_<i> --kind prepare --cluster configs/cluster/local.yaml -- track "
                         "(a command that does nothing)",
        "executor": "local", "tracking": "on: a temporary SQLite store (sqlite:///<tmp>/mlflow.db), one "
                                         "pipeline invocation (parent run) for all stages",
        "runs": args.runs,
        "stage_seconds": spread(on, 2), "stage_cpu_seconds": spread(on_cpu, 2),
        "target_seconds": 4.0,
        "first_stage_of_a_fresh_store_seconds": round(first, 2),
        "untracked_stage_seconds": spread(off, 2), "untracked_stage_cpu_seconds": spread(off_cpu, 2),
        "mlflow_client_in_a_fresh_process_seconds": spread(client, 2),
        "sender_cpu_seconds_whole_benchmark": sender,
        "python_start_seconds": spread(bare, 2),
        "baseline": None if baseline is None else {
            "what": args.baseline_label or "another copy of hmsa", "stage_seconds": spread(old, 2),
            "stage_cpu_seconds": spread(old_cpu, 2)},
        "cores": os.cpu_count(), "load_average_1min": [round(v, 2) for v in load],
        "note": "the machine is shared: compare with load_average_1min; *_cpu_seconds count the whole process "
                "tree (hmsa submit, submitit's controller and task) but not the detached sender, whose CPU is "
                "sender_cpu_seconds_whole_benchmark (one MLflow import, then every stage's sending)",
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
