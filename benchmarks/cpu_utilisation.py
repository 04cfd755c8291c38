"""CPU utilisation of a training stage: the embedded teacher's training (HRNet-OCR tiny, hierarchical
attention, 128x256 images) for a few dozen iterations through `hmsa submit` and the local cluster file,
with OMP_NUM_THREADS=1 in the submitting environment as Snakemake sets it for a rule's job. The whole
process tree (hmsa submit, submitit's controller, the task, any data-loader workers) is sampled with
psutil; utilisation = CPU seconds / (wall seconds x the machine's cores). "training" spans the job's
first to last progress line (start-up, model build and the final save excluded); "stage" is the whole
`hmsa submit` from start to exit. Target: training >= 85 % of 2 cores.

Through `hmsa submit`, not a Snakemake run: that is the exact path of every compute rule (Snakemake
only adds OMP_NUM_THREADS to its environment, set here), without the DAG's other stages in the window.
Writes reports/benchmarks/cpu_utilisation.json.

    .venv/bin/python benchmarks/cpu_utilisation.py [--runs 3] [--iterations 60]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

EXPERIMENT = "configs/experiments/embedded/cityscapes_teacher.yaml"
PROGRESS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) hmsa\.train INFO it (\d+)/(\d+)", re.M)
THREADS = re.compile(r"hmsa: job threads: (\d+)")


def _tree_cpu(root: psutil.Process) -> float:
    """CPU seconds of ``root`` and its live descendants, plus what their finished children used."""
    total = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return float("nan")
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def _cpu_at(samples: list[tuple[float, float]], when: float) -> float:
    """The tree's CPU seconds at ``when``, interpolated between the nearest samples."""
    for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
        if t0 <= when <= t1:
            return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c0
    raise ValueError("time outside the sampled window")


def one_run(work: Path, data: Path, cluster: Path, iterations: int, log_every: int, interval: float) -> dict:
    run = work / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "HMSA_TRACKING": "0", "HMSA_LOCK_DIR": str(work / "locks")}
    cmd = [str(Path(sys.executable).parent / "hmsa"), "submit", "--stage", "cpu_bench", "--kind", "train",
           "--run-dir", str(run), "--cluster", str(cluster), "--",
           "train", "--config", str(ROOT / EXPERIMENT), "--run-dir", str(run), "--out-model", str(work / "m.pt"),
           f"data.root={data / 'cityscapes'}", f"train.iterations={iterations}", f"train.log_every={log_every}",
           f"train.checkpoint_every={iterations}"]
    t_start = time.time()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    samples = [(t_start, 0.0)]
    before = os.times()
    while proc.poll() is None:
        cpu = _tree_cpu(root)
        if cpu == cpu:  # not NaN: the tree was readable
            samples.append((time.time(), cpu))
        time.sleep(interval)
    out = proc.stdout.read() if proc.stdout else ""
    wall = time.time() - t_start
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"hmsa submit failed ({proc.returncode}):\n{out[-3000:]}")
    stage_cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    marks = [(datetime.strptime(ts, "%Y-%m-%d %H:%M:%S,%f").timestamp(), int(it)) for ts, it, _ in
             PROGRESS.findall(out)]
    if len(marks) < 2:
        raise RuntimeError(f"fewer than two progress lines in the job's log:\n{out[-3000:]}")
    (a, it_a), (b, it_b) = marks[0], marks[-1]
    train_cpu = _cpu_at(samples, b) - _cpu_at(samples, a)
    threads = THREADS.findall(out)
    return {"stage_wall_s": wall, "stage_cpu_s": stage_cpu,
            "stage_utilisation": stage_cpu / wall / CORES,
            "training_window_s": b - a, "training_iterations": it_b - it_a,
            "training_cpu_s": train_cpu, "training_utilisation": train_cpu / (b - a) / CORES,
            "job_threads": int(threads[-1]) if threads else None}


def _summary(values: list[float]) -> dict:
    return {"min": round(100 * min(values), 1), "median": round(100 * statistics.median(values), 1),
            "max": round(100 * max(values), 1)}


def _one_thread_cluster(tmp: Path) -> Path:
    """configs/cluster/local.yaml with cpus_per_task 1: what every stage's job ran on before it set its
    threads from the cluster file (Snakemake's OMP_NUM_THREADS=1)."""
    import yaml

    data = yaml.safe_load((ROOT / "configs/cluster/local.yaml").read_text())
    data["defaults"]["cpus_per_task"] = 1
    path = tmp / "local-1cpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _figures(runs: list[dict]) -> dict:
    return {"training_utilisation_percent": _summary([r["training_utilisation"] for r in runs]),
            "stage_utilisation_percent": _summary([r["stage_utilisation"] for r in runs]),
            "training_window_seconds": _summary_s([r["training_window_s"] for r in runs]),
            "training_seconds_per_iteration": _summary_s([r["training_window_s"] / r["training_iterations"]
                                                          for r in runs], 3),
            "stage_wall_seconds": _summary_s([r["stage_wall_s"] for r in runs]),
            "job_threads": sorted({r["job_threads"] for r in runs}, key=str),
            "load_average_1min_before_each_run": [r["load_average_1min_before"] for r in runs]}


CORES = os.cpu_count() or 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.2, help="sampling period, seconds")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the interleaved runs with cpus_per_task 1 (the single thread of before)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/cpu_utilisation.json")
    args = ap.parse_args()
    from hmsa.data.synth import generate

    tmp = Path(tempfile.mkdtemp(prefix="hmsa-cpu-"))
    generate(tmp / "data", seed=0, cityscapes_counts={"train": 8, "val": 2, "train_extra": 8},
             mapillary_counts={"training": 2, "validation": 1})
    setups = {"cluster_file": ROOT / "configs/cluster/local.yaml"}
    if not args.no_baseline:
        setups["one_thread"] = _one_thread_cluster(tmp)
    runs: dict[str, list[dict]] = {name: [] for name in setups}
    for i in range(args.runs):
        for name, cluster in setups.items():  # interleaved: both see the same machine state
            work = tmp / f"{name}{i}"
            work.mkdir()
            load = os.getloadavg()[0]
            r = one_run(work, tmp / "data", cluster, args.iterations, args.log_every, args.interval)
            r["load_average_1min_before"] = round(load, 2)
            runs[name].append(r)
            print(f"{name} run {i}: training {100 * r['training_utilisation']:.1f} %, stage "
                  f"{100 * r['stage_utilisation']:.1f} % of {CORES} cores ({r['job_threads']} job threads, "
                  f"{r['training_window_s'] / r['training_iterations']:.3f} s/iteration)", file=sys.stderr)
    result = {
        "what": f"{EXPERIMENT} training, {args.iterations} iterations, through `hmsa submit` with "
                "configs/cluster/local.yaml; OMP_NUM_THREADS=1 in the submitting environment (as Snakemake "
                "sets it); tracking off",
        "cores": CORES, "runs": args.runs, "iterations": args.iterations,
        "cpus_per_task": _cpus_per_task(),
        **_figures(runs["cluster_file"]),
        "target_training_utilisation_percent": 85,
        "one_thread_baseline": _figures(runs["one_thread"]) if "one_thread" in runs else None,
        "note": "utilisation of all the machine's cores by this stage's process tree. The machine is shared: "
                "other processes' load lowers it, and a 2-thread OpenMP team whose threads cannot run at once "
                "waits at every barrier (see load_average_1min_before_each_run)",
    }
    write_result(args.out, result)
    return 0


def _summary_s(values: list[float], digits: int = 2) -> dict:
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def _cpus_per_task() -> int | None:
    from hmsa.cluster import load_cluster

    return load_cluster(ROOT / "configs/cluster/local.yaml").resources("cpu_bench", "train").get("cpus_per_task")


if __name__ == "__main__":
    sys.exit(main())
