# Shared wiring: paths derived from the pipeline config, and the environment every stage inherits.
import json
import os
import sys
import uuid
from pathlib import Path

from hmsa.orchestration.cluster import ClusterConfigError, load_cluster
from hmsa.config import ConfigError, config_files
from hmsa.orchestration.pipeline import stage_priorities

# The project root relative to the working directory ("." when Snakemake runs in the checkout): rule
# params and inputs built from it hold no absolute path, so a checkout copied or moved elsewhere has
# nothing to re-run (Snakemake re-runs a rule whose params or set of inputs changed).
ROOT = Path(os.path.relpath(workflow.basedir))
RESULTS = config["results"]
RUNS = config["runs"]
REPORTS = config["reports"]
LOGS = config.get("logs", "logs")  # each rule's log: <logs>/<stage>.log
CLUSTER = os.path.normpath(ROOT / config["cluster"])
# Training and auto-labelling stages that others wait for start first (the critical path: the teacher
# before Table 2's baselines); see hmsa.orchestration.pipeline.stage_priorities.
PRIORITY = stage_priorities(config)

# Shell commands find the `hmsa` script of the interpreter running Snakemake (the project's venv).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
# One id per invocation: the first stage submitted creates the MLflow parent run under it.
os.environ.setdefault("HMSA_INVOCATION_ID", uuid.uuid4().hex)
os.environ.setdefault("HMSA_MLFLOW_EXPERIMENT", config["tracking"]["experiment"])
_uri = config["tracking"]["uri"]
if _uri.startswith("sqlite:///") and not _uri.startswith("sqlite:////"):
    # Jobs may run in other directories (submitit, SLURM): pin the database to an absolute path.
    _uri = "sqlite:///" + str(Path(_uri[len("sqlite:///"):]).resolve())
os.environ.setdefault("MLFLOW_TRACKING_URI", _uri)
# The resolved pipeline config (--config overrides included), inline: the parent run's params.
os.environ["HMSA_PIPELINE_CONFIG"] = json.dumps(config, sort_keys=True, default=str)
# Who runs this invocation: a later one closes its MLflow runs if this process was killed.
os.environ.setdefault("HMSA_SNAKEMAKE_PID", str(os.getpid()))


# Every stage of this pipeline config: a cluster file's `stages:` may name only these (a misspelt stage
# would otherwise silently get the defaults, found out only when its job runs out of time or memory).
PIPELINE_STAGES = [f"prepare_{ds}" for ds in ("cityscapes", "mapillary")] + [
    *config["train"], *(config.get("autolabel") or {}), *config["evaluate"]]
try:  # read and checked as `hmsa submit` reads it: defaults < kinds < stages, per-seed copies included
    _CLUSTER_CFG = load_cluster(CLUSTER, PIPELINE_STAGES)
except ClusterConfigError as exc:
    sys.exit(str(exc))


def _stage_cluster(stage, kind):
    return _CLUSTER_CFG.resources(stage, kind)


def stage_resources(stage, kind):
    """What a stage's job asks the cluster for (configs/cluster/*.yaml), shown by `snakemake -n`.
    Informational for Snakemake: the job itself is submitted by `hmsa submit` with these values.
    `stage_jobs`: one per compute stage, so a profile's `resources: {stage_jobs: N}` bounds how many
    stages run (or are waited on) at once, whatever their threads."""
    r = _stage_cluster(stage, kind)
    nodes = int(r.get("nodes", 1))
    return {
        "nodes": nodes,
        "gpus": nodes * int(r.get("gpus_per_node", 0)),
        "tasks": nodes * int(r.get("tasks_per_node", 1)),
        "runtime": int(r.get("timeout_min", 60)),
        "slurm_partition": str(r.get("partition", "")),
        "stage_jobs": 1,
    }


def stage_threads(stage, kind):
    """A compute rule's `threads`: its stage's `cpus_per_task` in the cluster file, the CPUs each task
    of its job uses. The job sets its torch/OpenMP threads from its allocation itself, overriding the
    OMP_NUM_THREADS that Snakemake gives `hmsa submit`. Snakemake caps it at `--cores`."""
    return int(_stage_cluster(stage, kind).get("cpus_per_task", 1))


def expect_args(wildcards, output):
    """`--expect` for every declared output: `hmsa submit` collects an already finished job (after the
    head node died) only with all of them, putting back any that Snakemake deleted before re-running."""
    return [a for o in output for a in ("--expect", o)]


def experiment(path):
    return os.path.normpath(ROOT / path)


def experiment_bases(path):
    """The files an experiment `extends`: inputs too, so editing a shared base re-runs its stages."""
    try:
        return [str(p) for p in config_files(experiment(path))[1:]]
    except ConfigError as exc:
        sys.exit(str(exc))


def from_workdir(path):
    """A path given on the command line (e.g. --configfile), relative to the working directory."""
    return os.path.relpath(path)


def dataset_root(dataset):
    """What training, evaluation and auto-labelling read: Cityscapes as it is, Mapillary as the resized
    copy (long edge 2177, section 5.1) that `prepare_mapillary` writes; `config["data"]` names the raw roots."""
    if dataset == "mapillary":
        return f"{RUNS}/prepare_mapillary/data"  # a cache outside declared outputs: survives a failed job
    return config["data"][dataset]


def prepared(dataset):
    return f"{RESULTS}/prepare_{dataset}/manifest.json"


def model_file(stage):
    return f"{RESULTS}/{stage}/model.pt"


def autolabel_manifest(stage):
    return f"{RESULTS}/{stage}/manifest.json"


def autolabel_dir(stage):
    # Outside the declared outputs on purpose: Snakemake deletes the outputs of an interrupted job,
    # and finished labels must survive so that auto-labelling resumes where it stopped.
    return f"{RUNS}/{stage}/labels"


def eval_tags(name):
    """MLflow tags naming the paper table rows an evaluation fills."""
    rows = []
    for table, spec in config.get("tables", {}).items():
        for i, row in enumerate(spec if isinstance(spec, list) else [spec]):
            if name in config["seed_runs"][row["evaluation"]]:
                rows.append(f"{table}:{i}")
    return [f"hmsa.paper_rows={','.join(rows)}"] if rows else []


def report_outputs():
    return [f"{REPORTS}/{t}.md" for t in config["tables"]] + [
        f"{REPORTS}/README.md"
    ]


def per_class_plot_outputs():
    """One CSV per table (hmsa/orchestration/dvc_outputs.py): what dvc.yaml's per-class IoU heatmaps read."""
    return [f"{RESULTS}/per_class/{t}.csv" for t in config["tables"]]


def close_tracking(status):
    """Send what stages logged while the tracking server was unreachable, then close the invocation's
    MLflow parent run if a stage opened one. A tracking outage never fails the pipeline: what is
    still pending stays in runs/*/mlflow-wal/ for `hmsa track --sync runs`."""
    marker = Path(f".hmsa/invocations/{os.environ['HMSA_INVOCATION_ID']}")
    if not marker.exists():
        return
    try:
        shell("hmsa track --sync {RUNS:q} --invocation {os.environ[HMSA_INVOCATION_ID]:q} "
              "--experiment {os.environ[HMSA_MLFLOW_EXPERIMENT]:q} --status {status:q}")
    except Exception as exc:  # noqa: BLE001 - reported, never fatal
        print(f"hmsa: MLflow not fully updated ({exc}); run `hmsa track --sync {RUNS}` later", file=sys.stderr)


def print_summary():
    """The run's last lines: each table's headline mIoU, where the report and the MLflow UI are."""
    from hmsa.reporting.run_summary import summary

    try:
        print(summary(config, RESULTS, REPORTS), file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a summary never fails a finished run
        print(f"hmsa: no summary ({exc}); the report is in {REPORTS}/", file=sys.stderr)


onsuccess:
    close_tracking("FINISHED")
    print_summary()


onerror:
    close_tracking("FAILED")
