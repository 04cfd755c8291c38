"""``hmsa`` — the one entry point. Snakemake rules (and DVC) call only this.

Every path comes in as an argument; bad input ends with one line naming the file or key (exit 2).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hmsa.config import ConfigError


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="experiment YAML (deltas over hmsa/config.py defaults)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.iterations=20")


def _cmd_data(a: argparse.Namespace) -> int:
    from hmsa.io import atomic_write_json

    if a.data_cmd == "synth":
        from hmsa.data.synth import generate

        kw = {}
        if a.cityscapes:
            kw["cityscapes_counts"] = _counts(a.cityscapes, "--cityscapes")
        if a.mapillary:
            kw["mapillary_counts"] = _counts(a.mapillary, "--mapillary")
        if a.size:
            kw["size"] = tuple(int(v) for v in a.size.lower().split("x"))
        summary = generate(a.out, seed=a.seed, force=a.force, **kw)
        print(f"embedded dataset in {a.out}: {summary.get('counts', summary)}")
        return 0
    from hmsa.data.verify import verify

    if a.data_cmd == "prepare" and a.out is not None:
        a.out.unlink(missing_ok=True)  # the manifest means "prepared": never a stale one after a failure
    counts = verify(a.dataset, a.root, expected=None if not a.real_counts else _real_counts(a.dataset))
    print(f"{a.dataset} at {a.root}: {counts}")
    if a.data_cmd != "prepare":
        return 0
    manifest = {"dataset": a.dataset, "root": str(a.root.resolve()), "counts": counts}
    if getattr(a, "prepared", None) is not None:
        if a.dataset != "mapillary":
            raise ValueError("--prepared: only Mapillary is resized (Cityscapes is read as it is)")
        from hmsa.data.prepare import prepare_mapillary

        manifest.update(prepare_mapillary(a.root, a.prepared, a.long_edge))
        print(f"prepared {a.prepared} (long edge {a.long_edge or 'unchanged'}): {manifest['counts']}")
    if a.out is not None:
        atomic_write_json(a.out, manifest)
    return 0


def _counts(text: str, flag: str) -> dict[str, int]:
    """``train=4,val=2`` -> ``{"train": 4, "val": 2}``."""
    try:
        return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError as exc:
        raise ValueError(f"{flag} {text!r}: expected SPLIT=COUNT[,SPLIT=COUNT...]") from exc


def _real_counts(dataset: str) -> dict:
    from hmsa.data.verify import REAL_COUNTS

    return REAL_COUNTS[dataset]


def _cmd_train(a: argparse.Namespace) -> int:
    from hmsa import config
    from hmsa.training.loop import run_training

    cfg = config.load(a.config, a.overrides)
    _provenance(cfg, [cfg.data.root, cfg.model.init, cfg.data.extra_pool_root])
    result = run_training(cfg, a.run_dir, a.out_model, a.out_metrics, resume=not a.no_resume)
    print(f"trained {result['iterations']} iterations in {result['train_seconds']} s "
          f"(resumed from {result['resumed_from']})")
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from hmsa import config
    from hmsa.evaluation.evaluate import run_evaluation
    from hmsa.evaluation.settings import Setting, parse_setting

    cfg = config.load(a.config, a.overrides)
    settings = [parse_setting(s) for s in a.setting] or [
        Setting(cfg.eval.method, tuple(sorted(cfg.eval.scales)), cfg.eval.flip)]
    _provenance(cfg, [cfg.data.root, a.model])
    metrics = run_evaluation(cfg.data.dataset, Path(cfg.data.root), cfg.eval.split, a.model, settings,
                             a.out_dir, cfg.eval.max_images, cfg.eval.save_maps, a.save_predictions)
    if (a.out_dir / "maps").is_dir():
        from hmsa.tracking import stage_artifacts

        stage_artifacts({"figures/attention": a.out_dir / "maps"})
    for name, r in metrics["settings"].items():
        print(f"{name}: mIoU {100 * r['miou']:.2f} on {metrics['images']} images")
    return 0


def _cmd_autolabel(a: argparse.Namespace) -> int:
    from hmsa import config
    from hmsa.autolabel import resolve_shard, run_autolabel

    cfg = config.load(a.config, a.overrides)
    _provenance(cfg, [cfg.data.root, a.model])
    al = cfg.autolabel
    m = run_autolabel(Path(cfg.data.root), al.split, a.model, a.out_dir, a.manifest, al.threshold,
                      al.method, sorted(al.scales), al.flip, cfg.data.max_images, resolve_shard(a.shard),
                      truth=a.truth)
    if m:
        print(f"auto-labelled {m['images']} images, {100 * m['labelled_fraction_mean']:.1f}% of pixels labelled")
    for source, q in (m.get("quality") or {}).get("sources", {}).items():
        acc = "n/a" if q["accuracy"] is None else f"{100 * q['accuracy']:.1f}%"
        print(f"{source}: {100 * (q['coverage'] or 0):.1f}% of pixels labelled, {acc} of them correct")
    return 0


def _provenance(cfg: object, inputs: list) -> None:
    from hmsa.tracking import stage_provenance  # MLflow tags of the stage run (no-op outside a stage)

    stage_provenance(cfg, inputs)


def _cmd_submit(a: argparse.Namespace) -> int:
    from hmsa.launch import submit

    argv = list(a.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("submit: give the hmsa command to run after '--'")
    tags = dict(t.split("=", 1) for t in a.tag)
    return submit(a.stage, a.kind, a.run_dir, a.cluster, argv, tags, expect=a.expect)


def _cmd_score(a: argparse.Namespace) -> int:
    from hmsa.evaluation.score import score

    result = score(a.dataset, a.gt, a.pred, a.out)
    print(f"{a.dataset}: mIoU {100 * result['miou']:.2f} over {result['images']} images -> {a.out}")
    return 0


def _cmd_estimate(a: argparse.Namespace) -> int:
    from hmsa.estimate import estimate, table
    from hmsa.io import atomic_write_json

    declared = {}
    for item in a.declare:
        stage, _, sec = item.partition("=")
        try:
            declared[stage] = float(sec)
        except ValueError as exc:
            raise ValueError(f"--declare {item!r}: expected STAGE=SECONDS") from exc
    project = Path(__file__).resolve().parents[1]
    result = estimate(a.configfile, project, Path.cwd(), a.measure, a.measure_scale, a.steps, declared)
    print(table(result))
    if a.out is not None:
        atomic_write_json(a.out, result)
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from hmsa.report import build_report

    paths = build_report(a.pipeline_config, a.results, a.out, a.runs)
    print(f"report written: {', '.join(str(p) for p in paths)}")
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from hmsa.compare import compare

    print(compare(a.run_a, a.run_b, a.out, a.setting, a.experiment))
    return 0


def _cmd_track(a: argparse.Namespace) -> int:
    from hmsa import tracking

    if os.environ.get("HMSA_TRACKING", "1") == "0":
        return 0
    left: list[str] = []
    if a.sync:
        done = tracking.sync(a.sync)
        left = [run for run, ok in done.items() if not ok]
        print(f"MLflow: sent the pending logs of {len(done) - len(left)} run(s)"
              + (f"; still pending, server unreachable: {', '.join(left)}" if left else ""))
    if a.invocation:
        if not a.experiment:
            raise ValueError("track: --invocation needs --experiment")
        exp_id = tracking.ensure_experiment(a.experiment)
        run_id = tracking.get_or_create_parent(a.invocation, exp_id, {})
        tracking.finish_run(run_id, a.status)
    return 1 if left else 0


def _cmd_version(a: argparse.Namespace) -> int:
    """DVC versions of stage outputs (hmsa/versioning.py); errors are one line, exit 2."""
    from hmsa import versioning

    try:
        if a.version_cmd == "add":
            if a.mode == "off":
                print("versioning off (pipeline config versioning.enabled: false): outputs not recorded")
                return 0
            written = versioning.record(a.paths, push=a.mode == "push")
            print(f"versioned {len(written)} of {len(a.paths)} path(s)")
        elif a.version_cmd == "pull":
            restored = versioning.pull(a.paths or None)
            print(f"restored {len(restored)} output(s), re-stamped in the order they were made")
        else:
            for p in a.paths:
                print(f"{versioning.data_version(p) or '-'}  {p}")
    except versioning.VersioningError as exc:
        print(f"hmsa version: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_version_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser("version", help="DVC versions of data, auto-labels and final models")
    vsub = v.add_subparsers(dest="version_cmd", required=True)
    add = vsub.add_parser("add", help="record outputs with DVC (.dvc files in versions/), push if a remote is set")
    add.add_argument("--mode", choices=("off", "record", "push"), default="push",
                     help="off: do nothing; record: dvc commit only; push: also dvc push to the default remote")
    add.add_argument("paths", nargs="+", type=Path)
    pl = vsub.add_parser("pull", help="dvc pull, then make restored outputs newer than the checkout, in DAG order")
    pl.add_argument("paths", nargs="*", type=Path, help="outputs to restore (default: every versioned one)")
    sh = vsub.add_parser("show", help="print the DVC md5 of each path ('-' when not versioned)")
    sh.add_argument("paths", nargs="+", type=Path)
    v.set_defaults(func=_cmd_version)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hmsa", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("data", help="generate, verify or prepare a dataset")
    dsub = d.add_subparsers(dest="data_cmd", required=True)
    s = dsub.add_parser("synth", help="generate the embedded dataset in the real on-disk formats")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="regenerate even if complete")
    s.add_argument("--cityscapes", default="", help="image counts (default train=48,val=48,test=48,train_extra=64)")
    s.add_argument("--mapillary", default="", help="image counts (default training=48,validation=32)")
    s.add_argument("--size", default="", help="image size HxW, e.g. 128x256")
    for name in ("verify", "prepare"):
        v = dsub.add_parser(name, help=f"{name} a dataset root (layout, counts, labels)")
        v.add_argument("--dataset", choices=("cityscapes", "mapillary"), required=True)
        v.add_argument("--root", type=Path, required=True)
        v.add_argument("--real-counts", action="store_true", help="require the official image counts")
        v.add_argument("--out", type=Path, default=None, help="(prepare) manifest JSON to write")
        if name == "prepare":
            v.add_argument("--prepared", type=Path, default=None,
                           help="(mapillary) write the resized copy that training reads here")
            v.add_argument("--long-edge", type=int, default=2177,
                           help="(mapillary) resize so the long edge is this many px; 0 keeps sizes")
    d.set_defaults(func=_cmd_data)

    t = sub.add_parser("train", help="train (resumes from --run-dir by default)")
    _add_config_args(t)
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--out-model", type=Path, default=None)
    t.add_argument("--out-metrics", type=Path, default=None)
    t.add_argument("--no-resume", action="store_true", help="set the run dir's checkpoints aside, start over")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="mIoU / per-class IoU at any scales and fusion method")
    _add_config_args(e)
    e.add_argument("--model", type=Path, required=True, help="a model file written by 'hmsa train'")
    e.add_argument("--out-dir", type=Path, required=True)
    e.add_argument("--setting", action="append", default=[], help="METHOD:SCALES[:flip], repeatable")
    e.add_argument("--save-predictions", type=Path, default=None, metavar="DIR",
                   help="write prediction PNGs to DIR/<setting>/ (Cityscapes labelIds, Mapillary indices)")
    e.set_defaults(func=_cmd_evaluate)

    al = sub.add_parser("autolabel", help="hard-threshold auto-labels of the coarse images (section 4)")
    _add_config_args(al)
    al.add_argument("--model", type=Path, required=True)
    al.add_argument("--out-dir", type=Path, required=True)
    al.add_argument("--manifest", type=Path, required=True)
    al.add_argument("--shard", default=None, metavar="I/N",
                    help="label only shard I of N (default: SLURM_ARRAY_TASK_ID/COUNT, else all)")
    al.add_argument("--truth", type=Path, default=None, metavar="DIR",
                    help="true labels of the split (<DIR>/<split>/<city>/*_gtFine_labelIds.png, the embedded "
                         "dataset's truth/cityscapes): adds auto-label and coarse-label quality to the manifest")
    al.set_defaults(func=_cmd_autolabel)

    sb = sub.add_parser("submit", help="run an hmsa command as a stage through submitit and wait")
    sb.add_argument("--stage", required=True)
    sb.add_argument("--kind", default="train", help="resource class in the cluster file (train, evaluate...)")
    sb.add_argument("--run-dir", type=Path, required=True)
    sb.add_argument("--cluster", type=Path, required=True, help="configs/cluster/*.yaml")
    sb.add_argument("--tag", action="append", default=[], help="MLflow tag KEY=VALUE for the stage run")
    sb.add_argument("--expect", action="append", default=[], type=Path,
                    help="an output the stage makes: a finished job is collected only while they all exist")
    sb.add_argument("argv", nargs=argparse.REMAINDER)
    sb.set_defaults(func=_cmd_submit)

    sc = sub.add_parser("score", help="score prediction PNGs like the official benchmark")
    sc.add_argument("--dataset", choices=("cityscapes", "mapillary"), required=True)
    sc.add_argument("--gt", type=Path, required=True, help="ground truth (e.g. gtFine/val)")
    sc.add_argument("--pred", type=Path, required=True, help="predictions (Cityscapes: labelIds PNGs)")
    sc.add_argument("--out", type=Path, required=True, help="JSON with miou and per_class")
    sc.set_defaults(func=_cmd_score)

    es = sub.add_parser("estimate", help="GPU-hours and wall time per stage of a pipeline config (default: "
                        "derived from FLOPs counted on meta tensors, anchored on the paper's V100 time)")
    es.add_argument("--configfile", type=Path, required=True, help="configs/pipeline/*.yaml")
    es.add_argument("--measure", action="store_true",
                    help="instead of deriving: time real steps of each stage's model here (a GPU node; slow)")
    es.add_argument("--measure-scale", type=float, default=1.0,
                    help="shrink the measured size by this factor and scale the time by pixels")
    es.add_argument("--steps", type=int, default=2, help="timed steps per stage (median)")
    es.add_argument("--declare", action="append", default=[],
                    help="STAGE=SECONDS per unit (overrides derived / measured; STAGE also covers its "
                         "STAGE_seedN copies), repeatable")
    es.add_argument("--out", type=Path, default=None, help="JSON to write")
    es.set_defaults(func=_cmd_estimate)

    r = sub.add_parser("report", help="Tables 1-4 beside the paper's numbers")
    r.add_argument("--pipeline-config", type=Path, required=True)
    r.add_argument("--results", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--runs", type=Path, default=None, help="run dirs: send MLflow logs a tracking outage held back")
    r.set_defaults(func=_cmd_report)

    cp = sub.add_parser("compare", help="per-class IoU of two MLflow runs side by side")
    cp.add_argument("run_a", help="MLflow run id, or a stage name (its latest run)")
    cp.add_argument("run_b")
    cp.add_argument("--setting", action="append", default=[],
                    help="evaluation setting (e.g. hierarchical_0.5-1-2_flip); once for both runs, twice for A, B")
    cp.add_argument("--experiment", default="", help="where to look up stage names (default: every experiment)")
    cp.add_argument("--out", type=Path, default=None, help="CSV to write")
    cp.set_defaults(func=_cmd_compare)

    tr = sub.add_parser("track", help="close the MLflow parent run of a pipeline invocation; send pending logs")
    tr.add_argument("--invocation", default="")
    tr.add_argument("--experiment", default="")
    tr.add_argument("--sync", action="append", type=Path, default=[],
                    help="send the MLflow logs a tracking outage left in the run dirs under DIR (e.g. runs)")
    tr.add_argument("--status", default="FINISHED", choices=("FINISHED", "FAILED", "KILLED"))
    tr.set_defaults(func=_cmd_track)

    _add_version_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("HMSA_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("submitit").propagate = False  # submitit has its own handler: no duplicate lines
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        print(f"hmsa {args.cmd}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
