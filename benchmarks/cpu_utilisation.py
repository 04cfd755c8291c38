"""CPU utilisation and throughput of training stages: the embedded teacher's training (HRNet-OCR tiny,
hierarchical attention) for a few dozen iterations through `hmsa submit` and the local cluster file,
with OMP_NUM_THREADS=1 in the submitting environment as Snakemake sets it for a rule's job, in three
setups run interleaved: two stages at once with one thread each (what the default profile does:
`stage_jobs: 2`, cpus_per_task 1), one stage with two threads, one stage with one thread. Each stage's
process tree (hmsa submit, submitit's controller, the task) is sampled with psutil; utilisation = CPU
seconds / (window x the machine's cores) over the window in which every stage trains (between progress
lines: start-up, model build and the final save excluded). Target: training >= 85 % of 2 cores.

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

from common import spread, write_result  # noqa: E402

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


def _start(work: Path, data: Path, cluster: Path, iterations: int, log_every: int) -> subprocess.Popen:
    run = work / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "HMSA_TRACKING": "0", "HMSA_LOCK_DIR": str(work / "locks")}
    cmd = [str(Path(sys.executable).parent / "hmsa"), "submit", "--stage", f"cpu_bench_{work.name}", "--kind",
           "train", "--run-dir", str(run), "--cluster", str(cluster), "--",
           "train", "--config", str(ROOT / EXPERIMENT), "--run-dir", str(run), "--out-model", str(work / "m.pt"),
           f"data.root={data / 'cityscapes'}", f"train.iterations={iterations}", f"train.log_every={log_every}",
           f"train.checkpoint_every={iterations}"]
    return subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def one_run(works: list[Path], data: Path, cluster: Path, iterations: int, log_every: int,
            interval: float) -> dict:
    """Run one stage per work dir at once; utilisation and throughput over the window all of them train."""
    t_start = time.time()
    procs = [_start(w, data, cluster, iterations, log_every) for w in works]
    roots = [psutil.Process(p.pid) for p in procs]
    samples: list[list[tuple[float, float]]] = [[(t_start, 0.0)] for _ in procs]
    while any(p.poll() is None for p in procs):
        for root, series in zip(roots, samples, strict=True):
            cpu = _tree_cpu(root)
            if cpu == cpu:  # not NaN: the tree was readable
                series.append((time.time(), cpu))
        time.sleep(interval)
    wall = time.time() - t_start
    windows, threads = [], []
    for proc in procs:
        out = proc.stdout.read() if proc.stdout else ""
        if proc.returncode != 0:
            raise RuntimeError(f"hmsa submit failed ({proc.returncode}):\n{out[-3000:]}")
        marks = [(datetime.strptime(ts, "%Y-%m-%d %H:%M:%S,%f").timestamp(), int(it)) for ts, it, _ in
                 PROGRESS.findall(out)]
        if len(marks) < 2:
            raise RuntimeError(f"fewer than two progress lines in the job's log:\n{out[-3000:]}")
        windows.append((marks[0], marks[-1]))
        found = THREADS.findall(out)
        threads.append(int(found[-1]) if found else None)
    a = max(w[0][0] for w in windows)  # every stage is training between a and b
    b = min(w[1][0] for w in windows)
    if b <= a:
        raise RuntimeError("the stages' training windows do not overlap")
    cpu = sum(_cpu_at(series, b) - _cpu_at(series, a) for series in samples)
    rates = [(it_b - it_a) / (t_b - t_a) for (t_a, it_a), (t_b, it_b) in windows]
    return {"stage_wall_s": wall, "training_window_s": b - a, "training_utilisation": cpu / (b - a) / CORES,
            "iterations_per_s": sum(rates), "seconds_per_iteration_per_stage": statistics.mean(1 / r for r in rates),
            "job_threads": threads[0]}


def _cluster(tmp: Path, cpus: int) -> Path:
    """configs/cluster/local.yaml with another cpus_per_task."""
    import yaml

    data = yaml.safe_load((ROOT / "configs/cluster/local.yaml").read_text())
    data["defaults"]["cpus_per_task"] = cpus
    path = tmp / f"local-{cpus}cpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _figures(runs: list[dict]) -> dict:
    return {"training_utilisation_percent": spread([100 * r["training_utilisation"] for r in runs], 1),
            "machine_iterations_per_second": spread([r["iterations_per_s"] for r in runs], 2),
            "seconds_per_iteration_per_stage": spread([r["seconds_per_iteration_per_stage"] for r in runs], 3),
            "training_window_seconds": spread([r["training_window_s"] for r in runs], 2),
            "job_threads": sorted({r["job_threads"] for r in runs}, key=str),
            "load_average_1min_before_each_run": [r["load_average_1min_before"] for r in runs]}


CORES = os.cpu_count() or 1
#: name: (stages at once, cpus_per_task of each). The default profile runs two one-thread stages.
SETUPS = {"two_stages_1_thread_each": (2, 1), "one_stage_2_threads": (1, 2), "one_stage_1_thread": (1, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.2, help="sampling period, seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/cpu_utilisation.json")
    args = ap.parse_args()
    from hmsa.data.synth import generate

    tmp = Path(tempfile.mkdtemp(prefix="hmsa-cpu-"))
    generate(tmp / "data", seed=0, cityscapes_counts={"train": 8, "val": 2, "train_extra": 8},
             mapillary_counts={"training": 2, "validation": 1})
    runs: dict[str, list[dict]] = {name: [] for name in SETUPS}
    for i in range(args.runs):
        for name, (stages, cpus) in SETUPS.items():  # interleaved: all see the same machine state
            works = [tmp / f"{name}{i}_{k}" for k in range(stages)]
            for w in works:
                w.mkdir()
            load = os.getloadavg()[0]
            r = one_run(works, tmp / "data", _cluster(tmp, cpus), args.iterations, args.log_every, args.interval)
            r["load_average_1min_before"] = round(load, 2)
            runs[name].append(r)
            print(f"{name} run {i}: training {100 * r['training_utilisation']:.1f} % of {CORES} cores, "
                  f"{r['iterations_per_s']:.2f} iterations/s", file=sys.stderr)
    result = {
        "what": f"{EXPERIMENT} training, {args.iterations} iterations per stage, through `hmsa submit` with "
                "configs/cluster/local.yaml at the cpus_per_task of each setup; OMP_NUM_THREADS=1 in the "
                "submitting environment (as Snakemake sets it); tracking off",
        "cores": CORES, "runs": args.runs, "iterations": args.iterations,
        "cpus_per_task_of_the_cluster_file": _cpus_per_task(),
        "setups": {name: {"stages_at_once": SETUPS[name][0], "cpus_per_task": SETUPS[name][1],
                          **_figures(runs[name])} for name in SETUPS},
        "target_training_utilisation_percent": 85,
        "note": "utilisation: CPU seconds of the stages' process trees over the window in which every stage "
                "trains, divided by that window and the machine's cores. Throughput: iterations per second "
                "summed over the stages running at once. The machine is shared: other processes' load lowers "
                "both (see load_average_1min_before_each_run)",
    }
    write_result(args.out, result)
    return 0


def _cpus_per_task() -> int | None:
    from hmsa.orchestration.cluster import load_cluster

    return load_cluster(ROOT / "configs/cluster/local.yaml").resources("cpu_bench", "train").get("cpus_per_task")


if __name__ == "__main__":
    sys.exit(main())
