"""The command line of ``hmsa``: user commands first, each with a one-line help; the plumbing the
pipeline calls (submit, track, report, plots) listed apart. Kept free of heavy imports: ``hmsa --help``
and ``hmsa --version`` must answer at once."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

DESCRIPTION = ("hmsa: a reproducible workflow for Hierarchical Multi-Scale Attention for Semantic "
               "Segmentation (Tao et al., 2020). Snakemake and DVC call only this command.")
# (name, one-line help) of the commands the pipeline runs for you, shown after the user commands
PLUMBING = (
    ("submit", "run an hmsa command as a stage through submitit (local or SLURM) and wait"),
    ("track", "close a pipeline invocation's MLflow parent run; send logs held back by an outage"),
    ("report", "write Tables 1-4 and the figures from the evaluations' metrics files"),
    ("plots", "write the per-class IoU plot data of each table (DVC plots)"),
)
SETTING_HELP = "METHOD:SCALES[:flip], e.g. hierarchical:0.5,1,2:flip"


def version() -> str:
    """The installed package's version (package metadata: no import of the package's modules)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("hmsa")
    except PackageNotFoundError:  # a source checkout on PYTHONPATH, not installed
        from hmsa import __version__

        return __version__


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (like every other hmsa error), naming the
    command and the option; ``-h`` still shows the full usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} -h')\n")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="experiment YAML (deltas over hmsa/config.py defaults)")
    p.add_argument("overrides", nargs="*", help="KEY.SUB=VALUE overrides, e.g. train.iterations=20")


def _data(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="generate, verify or prepare a dataset",
                       description="Generate the embedded dataset, or verify / prepare a real one.")
    dsub = d.add_subparsers(dest="data_cmd", required=True, metavar="ACTION")
    s = dsub.add_parser("synth", help="generate the embedded dataset in the real on-disk formats")
    s.add_argument("--out", type=Path, required=True, help="dataset root to write (e.g. data/embedded)")
    s.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    s.add_argument("--force", action="store_true", help="regenerate even if complete")
    s.add_argument("--cityscapes", default="", help="image counts (default train=48,val=48,test=48,train_extra=64)")
    s.add_argument("--mapillary", default="", help="image counts (default training=48,validation=32)")
    s.add_argument("--size", default="", help="image size HxW, e.g. 128x256")
    for name in ("verify", "prepare"):
        v = dsub.add_parser(name, help=f"{name} a dataset root (layout, counts, labels)")
        v.add_argument("--dataset", choices=("cityscapes", "mapillary"), required=True, help="which dataset")
        v.add_argument("--root", type=Path, required=True, help="the dataset's root folder")
        v.add_argument("--real-counts", action="store_true", help="require the official image counts")
        v.add_argument("--out", type=Path, default=None, help="(prepare) manifest JSON to write")
        if name == "prepare":
            v.add_argument("--prepared", type=Path, default=None,
                           help="(mapillary) write the resized copy that training reads here")
            v.add_argument("--long-edge", type=int, default=2177,
                           help="(mapillary) resize so the long edge is this many px; 0 keeps sizes")


def _train_eval(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a model (resumes from --run-dir by default)",
                       description="Train one model; an interrupted run continues from its last checkpoint.")
    _config_args(t)
    t.add_argument("--run-dir", type=Path, required=True,
                   help="folder for checkpoints and the resolved config (resumed from if present)")
    t.add_argument("--out-model", type=Path, default=None, help="final model file to write (model.pt)")
    t.add_argument("--out-metrics", type=Path, default=None, help="training summary JSON to write (train.json)")
    t.add_argument("--no-resume", action="store_true", help="set the run dir's checkpoints aside, start over")

    e = sub.add_parser("evaluate", help="mIoU and per-class IoU at any scales and fusion method",
                       description="Score a model file on a split at one or more evaluation settings.")
    _config_args(e)
    e.add_argument("--model", type=Path, required=True, help="a model file written by 'hmsa train'")
    e.add_argument("--out-dir", type=Path, required=True,
                   help="writes metrics.json, per_class.csv, confusion.npz and dvc_metrics.json here")
    e.add_argument("--setting", action="append", default=[],
                   help=f"{SETTING_HELP}; repeatable (default: the config's eval.*)")
    e.add_argument("--save-predictions", type=Path, default=None, metavar="DIR",
                   help="write prediction PNGs to DIR/<setting>/ (Cityscapes labelIds, Mapillary indices)")

    al = sub.add_parser("autolabel", help="hard-threshold auto-labels of the coarse images (paper section 4)",
                        description="Label the coarse images with a teacher's multi-scale prediction.")
    _config_args(al)
    al.add_argument("--model", type=Path, required=True, help="the teacher's model file")
    al.add_argument("--out-dir", type=Path, required=True, help="folder for the label PNGs (gtCoarse layout)")
    al.add_argument("--manifest", type=Path, required=True,
                    help="JSON to write when done: threshold, labelled fraction, per-class pixels, quality")
    al.add_argument("--shard", default=None, metavar="I/N",
                    help="label only shard I of N (default: SLURM_ARRAY_TASK_ID/COUNT, else all)")
    al.add_argument("--truth", type=Path, default=None, metavar="DIR",
                    help="true labels of the split (the embedded dataset's truth/cityscapes): adds "
                         "auto-label and coarse-label quality to the manifest")

    sc = sub.add_parser("score", help="score prediction PNGs like the official benchmark")
    sc.add_argument("--dataset", choices=("cityscapes", "mapillary"), required=True, help="which label set")
    sc.add_argument("--gt", type=Path, required=True, help="ground truth (e.g. gtFine/val)")
    sc.add_argument("--pred", type=Path, required=True, help="predictions (Cityscapes: labelIds PNGs)")
    sc.add_argument("--out", type=Path, required=True, help="JSON with miou and per_class")


def _study(sub: argparse._SubParsersAction) -> None:
    es = sub.add_parser("estimate", help="GPU-hours and wall time per stage of a pipeline config",
                        description="Derived by default from FLOPs counted on meta tensors and anchored on "
                                    "the paper's V100 time; --measure or --declare override it.")
    es.add_argument("--configfile", type=Path, required=True, help="a pipeline config (configs/pipeline/*.yaml)")
    es.add_argument("--measure", action="store_true",
                    help="time real steps of each stage's model here instead (on a GPU node; slow)")
    es.add_argument("--measure-scale", type=float, default=1.0,
                    help="with --measure: shrink the size by this factor and scale the time by pixels")
    es.add_argument("--steps", type=int, default=2, help="with --measure: timed steps per stage (median)")
    es.add_argument("--declare", action="append", default=[], metavar="STAGE=SECONDS",
                    help="seconds per unit of a stage (and its STAGE_seedN copies), repeatable")
    es.add_argument("--out", type=Path, default=None, help="JSON to write")

    cp = sub.add_parser("compare", help="per-class IoU of two evaluations in MLflow, side by side",
                        description="Columns are named by the stages or runs given; IoU in percent.")
    cp.add_argument("run_a", help="a stage name (its latest MLflow run), a run name or a run id")
    cp.add_argument("run_b", help="the same for the second column")
    cp.add_argument("--setting", action="append", default=[],
                    help=f"{SETTING_HELP} (or hierarchical_0.5-1-2_flip); once for both, twice for A then B")
    cp.add_argument("--experiment", default="", help="MLflow experiment to look names up in (default: all)")
    cp.add_argument("--out", type=Path, default=None, help="CSV to write")

    v = sub.add_parser("version", help="DVC versions of data, auto-labels and final models")
    vsub = v.add_subparsers(dest="version_cmd", required=True, metavar="ACTION")
    add = vsub.add_parser("add", help="record outputs with DVC (.dvc files in versions/), push if a remote is set")
    add.add_argument("--mode", choices=("off", "record", "push"), default="push",
                     help="off: do nothing; record: dvc commit only; push: also dvc push to the default remote")
    add.add_argument("paths", nargs="+", type=Path, help="outputs to record")
    pl = vsub.add_parser("pull", help="dvc pull, then make restored outputs newer than the checkout, in DAG order")
    pl.add_argument("paths", nargs="*", type=Path, help="outputs to restore (default: every versioned one)")
    sh = vsub.add_parser("show", help="print the DVC md5 of each path ('-' when not versioned)")
    sh.add_argument("paths", nargs="+", type=Path, help="paths to look up")


def _plumbing(sub: argparse._SubParsersAction) -> None:
    # Added without `help=`: argparse then leaves them out of the command list; the epilog lists them.
    desc = dict(PLUMBING)
    sb = sub.add_parser("submit", description=f"Plumbing, used by the pipeline: {desc['submit']}.")
    sb.add_argument("--stage", required=True, help="stage name (the MLflow run name and job name)")
    from hmsa.orchestration.cluster import KINDS

    sb.add_argument("--kind", default="train", choices=KINDS,
                    help="resource class in the cluster file")
    sb.add_argument("--run-dir", type=Path, required=True, help="the stage's run dir: job ids, logs, checkpoints")
    sb.add_argument("--cluster", type=Path, required=True, help="cluster file (configs/cluster/*.yaml)")
    sb.add_argument("--tag", action="append", default=[], help="MLflow tag KEY=VALUE for the stage run")
    sb.add_argument("--expect", action="append", default=[], type=Path,
                    help="an output the stage makes: a finished job is collected only while they all exist")
    sb.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the hmsa command to run")

    tr = sub.add_parser("track", description=f"Plumbing, used by the pipeline: {desc['track']}.")
    tr.add_argument("--invocation", default="", help="the pipeline invocation id (HMSA_INVOCATION_ID)")
    tr.add_argument("--experiment", default="", help="the MLflow experiment of the invocation")
    tr.add_argument("--sync", action="append", type=Path, default=[],
                    help="send the MLflow logs a tracking outage left in the run dirs under DIR (e.g. runs)")
    tr.add_argument("--status", default="FINISHED", choices=("FINISHED", "FAILED", "KILLED"),
                    help="final status of the parent run")

    r = sub.add_parser("report", description=f"Plumbing, used by the pipeline: {desc['report']}.")
    r.add_argument("--pipeline-config", type=Path, required=True, help="the pipeline config that was run")
    r.add_argument("--results", type=Path, required=True, help="its results folder")
    r.add_argument("--out", type=Path, required=True, help="its reports folder")
    r.add_argument("--runs", type=Path, default=None, help="run dirs: send MLflow logs a tracking outage held back")

    pt = sub.add_parser("plots", description=f"Plumbing, used by the pipeline: {desc['plots']}.")
    pt.add_argument("--pipeline-config", type=Path, required=True, help="the pipeline config that was run")
    pt.add_argument("--results", type=Path, required=True, help="its results folder")
    pt.add_argument("--out-dir", type=Path, required=True,
                    help="writes <table>.csv (class, row, iou in %%) for each table of the config here")


class _Version(argparse.Action):
    """``--version``, reading the package metadata only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the hmsa version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"hmsa {version()}")
        parser.exit()


def _listing(title: str, rows: list[tuple[str, str]]) -> str:
    return f"{title}:\n" + "\n".join(f"  {name:<11}{text}" for name, text in rows)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="hmsa", description=DESCRIPTION, usage="hmsa [-h] [--version] COMMAND ...",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version)
    # The command lists are written out in the epilog (argparse's own listing cannot group them)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", help=argparse.SUPPRESS, prog="hmsa")
    _data(sub)
    _train_eval(sub)
    _study(sub)
    _plumbing(sub)
    user = [(a.dest, a.help) for a in sub._choices_actions]
    p.epilog = "\n\n".join([
        _listing("commands ('hmsa COMMAND -h' for its options)", user),
        _listing("plumbing (used by the pipeline, not needed by hand)", list(PLUMBING))])
    return p
