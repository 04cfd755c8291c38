"""Times the embedded pipeline: a full run from an empty working directory, then a second invocation
with nothing changed (Snakemake must decide "nothing to be done"), and where the full run's time went:
each job's wall time, from Snakemake's own records (start and end of every output, under
.snakemake/metadata). Writes reports/benchmarks/pipeline.json.

    .venv/bin/python benchmarks/pipeline.py [--workdir DIR]
    .venv/bin/python benchmarks/pipeline.py --configfile configs/pipeline/embedded-3seeds.yaml \
        --target 1800 --out reports/benchmarks/pipeline-3seeds.json
    .venv/bin/python benchmarks/pipeline.py --data-seed 1 --out reports/benchmarks/pipeline-data-seed1.json

``--data-seed N`` runs the config with another generated dataset (``data.seed: N``; its own MLflow
experiment), as the issue's "every claim holds for any data seed" asks; the config it ran is written
into the working directory as ``pipeline-config.yaml``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from hmsa.tracking.tags import git_commit  # noqa: E402

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


def _run(workdir: Path, configfile: Path | None) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--profile", str(ROOT / "workflows/profiles/default")]
    if configfile is not None:
        cmd += ["--configfile", str(configfile.resolve())]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


def _job_seconds(workdir: Path) -> dict[str, float]:
    """Wall seconds of each job, from Snakemake's record of each output (rule, job hash, start, end;
    the record's path is the output's name in base64), labelled by rule and its first output."""
    root = workdir / ".snakemake" / "metadata"
    jobs: dict[tuple, list] = {}
    for path in root.rglob("*"):
        try:
            meta = json.loads(path.read_text()) if path.is_file() else None
            output = base64.urlsafe_b64decode("".join(p.lstrip("@") for p in path.relative_to(root).parts)).decode()
        except (OSError, ValueError):
            continue
        if not meta or meta.get("starttime") is None or meta.get("endtime") is None:
            continue
        key = (meta.get("rule"), meta.get("job_hash"))
        start, end = float(meta["starttime"]), float(meta["endtime"])
        old = jobs.get(key, [start, end, output])
        jobs[key] = [min(old[0], start), max(old[1], end), min(old[2], output, key=len)]
    spans = {f"{rule}: {out}": round(end - start, 1) for (rule, _), (start, end, out) in jobs.items()}
    return dict(sorted(spans.items(), key=lambda kv: -kv[1]))


def _data_seed(configfile: Path) -> int:
    return int(yaml.safe_load(configfile.read_text())["data"]["seed"])


def _with_data_seed(configfile: Path, seed: int, workdir: Path) -> Path:
    """A copy of ``configfile`` generating its dataset with ``seed``, tracked in its own MLflow experiment
    (``experiment:`` and ``cluster:`` paths are relative to the project root, so the copy may live anywhere)."""
    config = yaml.safe_load(configfile.read_text())
    config["data"]["seed"] = seed
    config["name"] = f"{config['name']}-data-seed{seed}"
    config["tracking"]["experiment"] = f"{config['tracking']['experiment']}-data-seed{seed}"
    out = workdir / "pipeline-config.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=None, help="empty dir to run in (default: a temp dir)")
    ap.add_argument("--configfile", type=Path, default=None, help="a pipeline config (default: embedded.yaml)")
    ap.add_argument("--data-seed", type=int, default=None, help="generate the dataset with this seed (data.seed)")
    ap.add_argument("--target", type=float, default=600, help="the issue's target for the full run, seconds")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/pipeline.json")
    args = ap.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hmsa-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    configfile = args.configfile
    if args.data_seed is not None:
        configfile = _with_data_seed(configfile or ROOT / "configs/pipeline/embedded.yaml", args.data_seed, workdir)
    commit = git_commit(ROOT)  # the code that runs: the figures change with the recipe
    load_before = os.getloadavg()[0]
    full, proc = _run(workdir, configfile)
    load_after = os.getloadavg()[0]
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        return 1
    jobs = _job_seconds(workdir)
    noop, proc2 = _run(workdir, configfile)
    nothing = "Nothing to be done" in proc2.stdout + proc2.stderr
    result = {
        "pipeline": (args.configfile or Path("configs/pipeline/embedded.yaml")).name,
        "commit": commit,
        "data_seed": _data_seed(configfile or ROOT / "configs/pipeline/embedded.yaml"),
        "full_run_seconds": round(full, 1), "full_run_target_seconds": args.target,
        "noop_run_seconds": round(noop, 2), "noop_run_target_seconds": 5, "noop_nothing_to_be_done": nothing,
        "jobs": proc.stderr.count("Finished job") + proc.stdout.count("Finished job"),
        "job_seconds": jobs, "job_seconds_sum": round(sum(jobs.values()), 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "load_average_1min": {"before": round(load_before, 2), "after": round(load_after, 2)},
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "workdir": "an empty directory (temporary unless --workdir)",
    }
    write_result(args.out, result)
    return 0 if nothing else 1


if __name__ == "__main__":
    sys.exit(main())
