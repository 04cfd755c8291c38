"""The commands of ``hmsa``: run by the CLI (hmsa/cli.py) and, inside a stage's job, by
``hmsa.orchestration.launch``, so that the job does not go through the CLI module that submits it.

``run`` parses argv with the CLI's parser (hmsa/cli_args.py), calls the command's handler (here) and
turns an expected failure into one line naming the file or key (exit 2). ``submit`` is the one
command not handled here: it starts jobs, and hmsa/cli.py adds it on top.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hmsa.cli_args import build_parser
from hmsa.errors import BadInputError, HmsaError, one_line

Handler = Callable[[argparse.Namespace], int]


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
            kw["size"] = _size(a.size)
        summary = generate(a.out, seed=a.seed, force=a.force, **kw)
        print(f"embedded dataset in {a.out}: {summary.get('counts', summary)}")
        return 0
    from hmsa.data.verify import verify

    if a.data_cmd == "prepare":  # a directory as --out, a read-only folder: found before decoding it all
        from hmsa.io import check_output, check_writable_dir

        if a.out is not None:
            check_output(a.out, "--out")
            a.out.unlink(missing_ok=True)  # the manifest means "prepared": never a stale one after a failure
        if getattr(a, "prepared", None) is not None:
            check_writable_dir(a.prepared)
    counts = verify(a.dataset, a.root, expected=None if not a.real_counts else _real_counts(a.dataset))
    print(f"{a.dataset} at {a.root}: {counts}")
    if a.data_cmd != "prepare":
        return 0
    manifest = {"dataset": a.dataset, "root": str(a.root.resolve()), "counts": counts}
    if getattr(a, "prepared", None) is not None:
        if a.dataset != "mapillary":
            raise BadInputError("--prepared: only Mapillary is resized (Cityscapes is read as it is)")
        from hmsa.data.prepare import prepare_mapillary

        manifest.update(prepare_mapillary(a.root, a.prepared, a.long_edge))
        print(f"prepared {a.prepared} (long edge {a.long_edge or 'unchanged'}): {manifest['counts']}")
    if a.out is not None:
        atomic_write_json(a.out, manifest)
    return 0


def _counts(text: str, flag: str) -> dict[str, int]:
    """``train=4,val=2`` -> ``{"train": 4, "val": 2}`` (split names and bounds: ``synth.check_request``)."""
    try:
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError as exc:
        raise BadInputError(f"{flag} {text!r}: expected SPLIT=COUNT[,SPLIT=COUNT...]") from exc


def _size(text: str) -> tuple[int, int]:
    """``128x256`` -> ``(128, 256)`` (bounds: ``synth.check_request``)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise BadInputError(f"--size {text!r}: expected HEIGHTxWIDTH, e.g. 128x256") from exc
    return h, w


def _real_counts(dataset: str) -> dict:
    from hmsa.data.verify import REAL_COUNTS

    return REAL_COUNTS[dataset]


def _cmd_train(a: argparse.Namespace) -> int:
    from hmsa import config
    from hmsa.training.loop import run_training

    cfg = config.load(a.config, a.overrides)
    _provenance(cfg, [cfg.data.root, cfg.model.init, cfg.data.extra_pool_root], "train")
    result = run_training(cfg, a.run_dir, a.out_model, a.out_metrics, resume=not a.no_resume)
    print(f"trained {result['iterations']} iterations in {result['train_seconds']} s "
          f"(resumed from {result['resumed_from']})")
    return 0


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from hmsa import config
    from hmsa.evaluation.evaluate import run_evaluation
    from hmsa.evaluation.settings import Setting, parse_setting
    from hmsa.orchestration.dvc_outputs import DVC_METRICS, write_dvc_metrics

    cfg = config.load(a.config, a.overrides)
    settings = [parse_setting(s) for s in a.setting] or [
        Setting(cfg.eval.method, tuple(sorted(cfg.eval.scales)), cfg.eval.flip)]
    rank_zero = int(os.environ.get("RANK", "0")) == 0
    if rank_zero:  # an earlier run's numbers must not pass for this one's if this one fails
        (a.out_dir / DVC_METRICS).unlink(missing_ok=True)
    _provenance(cfg, [cfg.data.root, a.model], "evaluate")
    metrics = run_evaluation(cfg.data.dataset, Path(cfg.data.root), cfg.eval.split, a.model, settings,
                             a.out_dir, cfg.eval.max_images, cfg.eval.save_maps, a.save_predictions)
    if rank_zero:
        write_dvc_metrics(a.out_dir / DVC_METRICS, metrics)
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
    _provenance(cfg, [cfg.data.root, a.model], "autolabel")
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


def _provenance(cfg: object, inputs: list, command: str) -> None:
    from hmsa.tracking import stage_provenance  # MLflow tags of the stage run, or of a standalone run

    stage_provenance(cfg, inputs, command=command)


def _cmd_score(a: argparse.Namespace) -> int:
    from hmsa.evaluation.score import score
    from hmsa.io import check_output

    check_output(Path(a.out), "--out")  # a directory there fails now, not after scoring every file
    result = score(a.dataset, a.gt, a.pred, a.out)
    print(f"{a.dataset}: mIoU {100 * result['miou']:.2f} over {result['images']} images -> {a.out}")
    return 0


def _cmd_estimate(a: argparse.Namespace) -> int:
    from hmsa.io import atomic_write_json
    from hmsa.orchestration.estimate import estimate, table

    declared = {}
    for item in a.declare:
        stage, _, sec = item.partition("=")
        try:
            declared[stage] = float(sec)
        except ValueError as exc:
            raise BadInputError(f"--declare {item!r}: expected STAGE=SECONDS") from exc
    project = Path(__file__).resolve().parents[1]
    result = estimate(a.configfile, project, Path.cwd(), a.measure, a.measure_scale, a.steps, declared)
    print(table(result))
    if a.out is not None:
        atomic_write_json(a.out, result)
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from hmsa.reporting.report import build_report

    paths = build_report(a.pipeline_config, a.results, a.out, a.runs)
    print(f"report written: {', '.join(str(p) for p in paths)}")
    return 0


def _cmd_compare(a: argparse.Namespace) -> int:
    from hmsa.reporting.compare import compare

    print(compare(a.run_a, a.run_b, a.out, a.setting, a.experiment))
    return 0


def _cmd_plots(a: argparse.Namespace) -> int:
    from hmsa.orchestration.dvc_outputs import write_per_class_plots

    for path in write_per_class_plots(a.pipeline_config, a.results, a.out_dir):
        print(f"per-class IoU plot data: {path}")
    return 0


def _cmd_track(a: argparse.Namespace) -> int:
    from hmsa import tracking
    from hmsa.tracking import parent, sender

    if a.invocation:  # checked even with tracking off: a bad id is a bad command line either way
        parent.check_invocation(a.invocation, "--invocation")
    if os.environ.get("HMSA_TRACKING", "1") == "0":
        return 0
    left: list[str] = []
    if a.sync:
        done = sender.sync(a.sync)
        left = [run for run, ok in done.items() if not ok]
        if done:  # silent when nothing was held back (the usual case)
            print(f"MLflow: sent the pending logs of {len(done) - len(left)} run(s)"
                  + (f"; still pending, server unreachable: {', '.join(left)}" if left else ""))
    if a.invocation:
        if not a.experiment:
            raise BadInputError("track: --invocation needs --experiment")
        exp_id = tracking.ensure_experiment(a.experiment)
        run_id = parent.get_or_create_parent(a.invocation, exp_id, {})
        tracking.finish_run(run_id, a.status)
    return 1 if left else 0


def _cmd_version(a: argparse.Namespace) -> int:
    """DVC versions of stage outputs (hmsa/orchestration/versioning.py); errors are one line, exit 2."""
    from hmsa.orchestration import versioning

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


# Every command but ``submit`` (hmsa/cli.py): what a stage's job may run.
HANDLERS = {"data": _cmd_data, "train": _cmd_train, "evaluate": _cmd_evaluate, "autolabel": _cmd_autolabel,
            "score": _cmd_score, "estimate": _cmd_estimate, "compare": _cmd_compare, "version": _cmd_version,
            "track": _cmd_track, "report": _cmd_report, "plots": _cmd_plots}


def run(argv: list[str] | None = None, handlers: dict[str, Handler] = HANDLERS) -> int:
    """``hmsa <argv>`` with ``handlers``: the exit code; a usage error exits 2 (argparse)."""
    logging.basicConfig(level=os.environ.get("HMSA_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("submitit").propagate = False  # submitit has its own handler: no duplicate lines
    args = build_parser().parse_args(argv)
    handler = handlers.get(args.cmd)
    if handler is None:  # `submit` inside a stage's job: a job runs its stage, it never submits another
        print(f"hmsa {args.cmd}: error: a stage's job runs one stage; it does not submit others", file=sys.stderr)
        return 2
    try:
        return int(handler(args) or 0)
    # Expected failures only: a ValueError or KeyError from deep inside is a bug and keeps its traceback.
    except (HmsaError, FileNotFoundError) as exc:
        print(f"hmsa {args.cmd}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only folder, a directory where a file goes
        msg = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else " ".join(str(exc).split())
        print(f"hmsa {args.cmd}: error: {msg}", file=sys.stderr)
        return 2

