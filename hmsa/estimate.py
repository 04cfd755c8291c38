"""``hmsa estimate``: GPU-hours and wall time of every stage of a pipeline config, before running it.

Work per stage comes from the configs (training iterations; images to evaluate or auto-label, from the
real datasets' counts or the files present). Time per unit is either MEASURED on the machine this runs
on (``--measure``: a few real training steps / forwards of the configured model, method and scales; with
``--measure-scale`` < 1 the crop is shrunk and the time scaled up by the pixel ratio — an extrapolation,
said so in the output) or DECLARED (``--declare stage=seconds``). Wall time assumes perfect DDP scaling:
each GPU takes one image per iteration (batch 1 per GPU, section 5.1).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from hmsa import config as cfgmod
from hmsa.cluster import load_cluster
from hmsa.data.verify import REAL_COUNTS

EVAL_SIZE = {"cityscapes": (1024, 2048), "mapillary": (1632, 2177)}  # Mapillary: long edge 2177 (§5.1)


def _gpus(cluster: Any, stage: str, kind: str) -> int:
    r = cluster.resources(stage, kind)
    return max(1, int(r.get("nodes", 1)) * int(r.get("gpus_per_node", 0) or 1))


def _images(pipeline: dict, dataset: str, split: str, root: Path) -> int:
    if not pipeline["data"].get("embedded"):
        return REAL_COUNTS[dataset][split]
    from hmsa.data import build_dataset

    kw = {"labels": "none"} if dataset == "cityscapes" else {}
    return len(build_dataset(dataset, root / pipeline["data"][dataset], split, **kw))


def stage_work(pipeline: dict, project: Path, workdir: Path) -> list[dict[str, Any]]:
    """One entry per compute stage: kind, config, units of work (iterations or images)."""
    work = []
    for name, st in pipeline["train"].items():
        c = cfgmod.load(project / st["experiment"])
        work.append({"stage": name, "kind": "train", "cfg": c, "dataset": st["dataset"], "units": c.train.iterations})
    for name, st in (pipeline.get("autolabel") or {}).items():
        c = cfgmod.load(project / st["experiment"])
        n = _images(pipeline, "cityscapes", c.autolabel.split, workdir)
        work.append({"stage": name, "kind": "autolabel", "cfg": c, "dataset": "cityscapes", "units": n,
                     "model_stage": st["teacher"]})
    for name, ev in pipeline["evaluate"].items():
        model_stage = pipeline["train"][ev["model"]]
        c = cfgmod.load(project / ev.get("experiment", model_stage["experiment"]))
        n = _images(pipeline, ev["dataset"], c.eval.split, workdir)
        work.append({"stage": name, "kind": "evaluate", "cfg": c, "dataset": ev["dataset"], "units": n,
                     "settings": ev["settings"]})
    return work


def _median_time(fn: Any, steps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(item: dict, classes: int, scale: float, steps: int, model_cfg: cfgmod.Config) -> float:
    """Seconds per unit (training iteration on one GPU, or one image) at the configured size."""
    from hmsa.evaluation.settings import parse_setting
    from hmsa.models import build_model
    from hmsa.models.multiscale import forward_train, predict_multiscale

    m = model_cfg.model
    model = build_model(m.name, classes, attention=m.attention, explicit_scales=cfgmod.explicit_scales(model_cfg))
    if item["kind"] == "train":
        t = item["cfg"].train
        h, w = (max(32, round(v * scale)) for v in item["cfg"].data.crop)
        x, y = torch.randn(2, 3, h, w), torch.randint(0, classes, (2, h, w))

        def step() -> None:
            out = forward_train(model, x, t.method, t.scales)
            torch.nn.functional.cross_entropy(out["fused"], y).backward()

        # measured with 2 images (BatchNorm needs > 1 in training); a GPU holds 1
        return _median_time(step, steps) / 2 * (item["cfg"].data.crop[0] * item["cfg"].data.crop[1]) / (h * w)
    model.eval()
    h, w = (max(32, round(v * scale)) for v in EVAL_SIZE[item["dataset"]])
    x = torch.randn(1, 3, h, w)
    full = EVAL_SIZE[item["dataset"]][0] * EVAL_SIZE[item["dataset"]][1] / (h * w)
    if item["kind"] == "autolabel":
        a = item["cfg"].autolabel
        settings = [(a.method, a.scales, a.flip)]
    else:
        settings = [(s.method, list(s.scales), s.flip) for s in map(parse_setting, item["settings"])]
    with torch.no_grad():
        return sum(_median_time(lambda s=s: predict_multiscale(model, x, s[1], s[0], s[2]), steps)
                   for s in settings) * full


def estimate(pipeline_file: Path, project: Path, workdir: Path, do_measure: bool, scale: float, steps: int,
             declared: dict[str, float]) -> dict[str, Any]:
    pipeline = yaml.safe_load(Path(pipeline_file).read_text())
    cluster = load_cluster(project / pipeline["cluster"])
    rows, models = [], {}
    for item in stage_work(pipeline, project, workdir):
        classes = 19 if item["dataset"] == "cityscapes" else 65
        # evaluation / auto-labelling run the model of the stage that trained it
        source_stage = item.get("model_stage") or (pipeline["evaluate"].get(item["stage"]) or {}).get("model")
        model_cfg = item["cfg"] if item["kind"] == "train" else cfgmod.load(
            project / pipeline["train"][source_stage]["experiment"])
        models[item["stage"]] = model_cfg.model.name
        if item["stage"] in declared:
            sec, source = declared[item["stage"]], "declared"
        elif do_measure:
            torch.manual_seed(0)
            sec = measure(item, classes, scale, steps, model_cfg)
            source = "measured" + (f" at {scale:g}x size, scaled by pixels" if scale != 1 else "")
        else:
            raise ValueError(f"stage {item['stage']}: no time per unit: pass --measure or --declare "
                             f"{item['stage']}=SECONDS")
        gpus = _gpus(cluster, item["stage"], item["kind"])
        per_gpu = item["units"] if item["kind"] == "train" else math.ceil(item["units"] / gpus)
        wall = per_gpu * sec / 3600
        rows.append({"stage": item["stage"], "kind": item["kind"], "model": models[item["stage"]],
                     "units": item["units"], "seconds_per_unit": sec, "gpus": gpus, "wall_hours": wall,
                     "gpu_hours": wall * gpus, "source": source})
    total = {"gpu_hours": sum(r["gpu_hours"] for r in rows),
             "wall_hours_sequential": sum(r["wall_hours"] for r in rows)}
    return {"pipeline": str(pipeline_file), "device": "cuda" if torch.cuda.is_available() else "cpu",
            "stages": rows, "total": total}


def table(result: dict[str, Any]) -> str:
    import pandas as pd

    df = pd.DataFrame(result["stages"])[["stage", "model", "units", "seconds_per_unit", "gpus", "wall_hours",
                                          "gpu_hours", "source"]]
    t = result["total"]
    return (df.to_markdown(index=False, floatfmt=".3g") + f"\n\ntotal: {t['gpu_hours']:.4g} GPU-hours, "
            f"{t['wall_hours_sequential']:.4g} h wall if the stages ran one after another "
            f"(measured on {result['device']})")
