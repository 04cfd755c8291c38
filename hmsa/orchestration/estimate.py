"""``hmsa estimate``: GPU-hours and wall time of every stage of a pipeline config, before running it.

Work per stage comes from the configs, with ``seeds:`` expanded (``hmsa.orchestration.pipeline.expand_seeds``):
training iterations; images to evaluate or auto-label (the real datasets' counts, or the files present).

Time per unit, in order of precedence:

* DECLARED (``--declare STAGE=SECONDS``; a stage's seed copies ``STAGE_seedN`` take its value too);
* MEASURED (``--measure``, meant for a GPU node: a few real training steps / forwards of the configured
  model, method and scales; with ``--measure-scale`` < 1 the size is shrunk and the time scaled up by
  the pixel ratio, an extrapolation said so in the ``source`` column);
* DERIVED (the default): the FLOPs of one unit counted exactly by ``torch.utils.flop_counter
  .FlopCounterMode`` on the ``meta`` device (shapes only, no arithmetic, no memory), divided by a
  throughput anchored on the paper's one measured time (Table 1: 0.80 s per training minibatch of
  DeepLabV3+ ResNet-50, single scale, on a V100; ``REFERENCE``).

A unit is one training iteration of ONE GPU (forward + backward of ``forward_train`` at batch 1, the
paper's batch per GPU, at the stage's crop, method and scales) or one image for evaluation /
auto-labelling (``predict_multiscale`` of every setting at the full image size ``EVAL_SIZE``).

What FlopCounterMode counts (torch 2.14): convolutions (``aten.convolution``), their backward
(``aten.convolution_backward``: input and weight gradients, only those autograd asks for — the first
convolution gets no input gradient) and matrix products (``mm``/``addmm``/``bmm``, OCR's attention),
each as 2 FLOPs per multiply-add. Not counted: BatchNorm, ReLU, bilinear resizing, pooling, softmax,
the element-wise fusion and the loss (RMI + cross-entropy on the logits, negligible next to the
trunk). Those memory-bound ops do take GPU time; the anchor absorbs them at the reference's ratio.
One throughput serves every stage: HRNet-OCR (many narrow convolutions) and inference (no backward)
likely reach a different fraction of the GPU than DeepLabV3+ training, so derived figures are a first
estimate; ``--measure`` on the target GPU replaces them.

Wall time assumes perfect DDP scaling: every GPU runs all iterations of its stage on its own image,
and an evaluation's images are split evenly over the stage's GPUs.
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from hmsa import config as cfgmod
from hmsa.data.verify import REAL_COUNTS
from hmsa.errors import BadInputError
from hmsa.orchestration.cluster import load_cluster

EVAL_SIZE = {"cityscapes": (1024, 2048), "mapillary": (1632, 2177)}  # Mapillary: long edge 2177 (§5.1)
CLASSES = {"cityscapes": 19, "mapillary": 65}

# The paper's one measured time (Table 1, "Minibatch training time (sec) ... measured on an Nvidia Tesla
# V100"): single-scale training of DeepLabV3+ ResNet-50 (no attention head) on Mapillary. The paper does
# not say at which crop / batch it was timed; we assume its Mapillary recipe (§5.1): crop 1856x1024,
# batch 1 per GPU, mixed precision, DDP on 8-GPU DGX nodes, i.e. one minibatch = one iteration of one GPU.
REFERENCE: dict[str, Any] = {
    "what": "DeepLabV3+ ResNet-50 single-scale training iteration, crop 1024x1856, batch 1 per GPU, "
            "on a V100",
    "model": "deeplabv3plus_r50", "attention": False, "classes": CLASSES["mapillary"],
    "method": "single", "scales": (1.0,), "crop": (1024, 1856), "seconds": 0.80,
}


# ---------------------------------------------------------------------------------------------------
# FLOPs on the meta device


def _without_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm layer replaced by Identity. FlopCounterMode has no formula for batch norm, so the
    count is unchanged (tests/test_estimate.py checks it), but meta batch norm runs through Python
    decompositions that took ~3/4 of the counting time of HRNet-OCR (~300 BN layers)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(module, name, nn.Identity())
    return model


@functools.cache
def _meta_model(name: str, classes: int, attention: bool, explicit: tuple[float, ...] | None,
                keep_batchnorm: bool) -> nn.Module:
    from hmsa.models import build_model

    # Built directly on meta: parameters have shapes but no storage (and no random init is computed).
    with torch.device("meta"):
        model = build_model(name, classes, attention=attention, explicit_scales=explicit)
    return model if keep_batchnorm else _without_batchnorm(model)


@functools.cache
def train_flops(model: str, classes: int, attention: bool, explicit: tuple[float, ...] | None, method: str,
                scales: tuple[float, ...], crop: tuple[int, int], keep_batchnorm: bool = False) -> int:
    """FLOPs of one training iteration of one GPU: forward + backward of ``forward_train`` on ONE image
    of ``crop`` (H, W). The backward starts from every output the loss reads (fused, per-scale and
    auxiliary logits); the loss itself is left out (see the module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    from hmsa.models.multiscale import forward_train

    net = _meta_model(model, classes, attention, explicit, keep_batchnorm)
    net.train()
    x = torch.empty(1, 3, *crop, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = forward_train(net, x, method, list(scales))
        outputs = [out["fused"], *out["per_scale"].values()] + ([out["aux"]] if out.get("aux") is not None else [])
        torch.stack([o.sum() for o in outputs]).sum().backward()
    net.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


@functools.cache
def image_flops(model: str, classes: int, attention: bool, explicit: tuple[float, ...] | None,
                settings: tuple[tuple[str, tuple[float, ...], bool], ...], size: tuple[int, int],
                keep_batchnorm: bool = False) -> int:
    """FLOPs of predicting one image of ``size`` (H, W) with every (method, scales, flip) setting."""
    from torch.utils.flop_counter import FlopCounterMode

    from hmsa.models.multiscale import predict_multiscale

    net = _meta_model(model, classes, attention, explicit, keep_batchnorm)
    net.eval()
    x = torch.empty(1, 3, *size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        for method, scales, flip in settings:
            predict_multiscale(net, x, list(scales), method, flip)
    return int(counter.get_total_flops())


def reference() -> dict[str, Any]:
    """The anchor: the reference step's FLOPs (counted like every stage's) and the throughput they give."""
    r = REFERENCE
    flops = train_flops(r["model"], r["classes"], r["attention"], None, r["method"], r["scales"], r["crop"])
    return {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()},
            "tflop": flops / 1e12, "tflop_per_s": flops / 1e12 / r["seconds"]}


def _settings(item: dict) -> tuple[tuple[str, tuple[float, ...], bool], ...]:
    from hmsa.evaluation.settings import parse_setting

    if item["kind"] == "autolabel":
        a = item["cfg"].autolabel
        return ((a.method, tuple(sorted(float(s) for s in a.scales)), bool(a.flip)),)
    return tuple((s.method, tuple(s.scales), s.flip) for s in map(parse_setting, item["settings"]))


def stage_flops(item: dict, model_cfg: cfgmod.Config, classes: int) -> int:
    """FLOPs of one unit of ``item`` (one GPU's training iteration, or one image)."""
    m = model_cfg.model
    key = (m.name, classes, bool(m.attention), cfgmod.explicit_scales(model_cfg))
    if item["kind"] == "train":
        t = item["cfg"].train
        return train_flops(*key, t.method, tuple(sorted(float(s) for s in t.scales)), tuple(item["cfg"].data.crop))
    return image_flops(*key, _settings(item), EVAL_SIZE[item["dataset"]])


# ---------------------------------------------------------------------------------------------------
# Work per stage


def _images(pipeline: dict, dataset: str, split: str, root: Path) -> int:
    if not pipeline["data"].get("embedded"):
        return REAL_COUNTS[dataset][split]
    from hmsa.data import build_dataset

    kw = {"labels": "none"} if dataset == "cityscapes" else {}
    return len(build_dataset(dataset, root / pipeline["data"][dataset], split, **kw))


def stage_work(pipeline: dict, project: Path, workdir: Path) -> list[dict[str, Any]]:
    """One entry per compute stage of a seed-expanded pipeline config: kind, config, units of work
    (iterations or images), and the training stage whose model it runs."""
    work = []
    for name, st in pipeline["train"].items():
        c = cfgmod.load(project / st["experiment"])
        work.append({"stage": name, "kind": "train", "cfg": c, "dataset": st["dataset"], "units": c.train.iterations,
                     "model_stage": name})
    for name, st in (pipeline.get("autolabel") or {}).items():
        c = cfgmod.load(project / st["experiment"])
        n = _images(pipeline, "cityscapes", c.autolabel.split, workdir)
        work.append({"stage": name, "kind": "autolabel", "cfg": c, "dataset": "cityscapes", "units": n,
                     "model_stage": st["teacher"]})
    for name, ev in pipeline["evaluate"].items():
        model_stage = pipeline["train"][ev["model"]]
        c = cfgmod.load(project / ev.get("experiment", model_stage["experiment"]))
        n = _images(pipeline, ev["dataset"], ev.get("split") or c.eval.split, workdir)
        work.append({"stage": name, "kind": "evaluate", "cfg": c, "dataset": ev["dataset"], "units": n,
                     "settings": ev["settings"], "model_stage": ev["model"]})
    return work


def _gpus(cluster: Any, stage: str, kind: str) -> int:
    r = cluster.resources(stage, kind)
    return max(1, int(r.get("nodes", 1)) * int(r.get("gpus_per_node", 0) or 1))


# ---------------------------------------------------------------------------------------------------
# Measured (on the machine this runs on)


SLOW_STEP = 5.0  # seconds: a step slower than this reports itself (a CPU run of a paper-size model)


def _median_time(fn: Any, steps: int, device: torch.device) -> float:
    def timed(what: str) -> float:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        took = time.perf_counter() - t0
        if took > SLOW_STEP:  # long measurements say they are alive
            print(f"hmsa estimate:     {what} took {took:.0f} s", file=sys.stderr, flush=True)
        return took

    timed("warm-up step")
    return statistics.median(timed(f"timed step {i}/{steps}") for i in range(1, steps + 1))


def measure(item: dict, classes: int, scale: float, steps: int, model_cfg: cfgmod.Config,
            device: torch.device | None = None) -> float:
    """Seconds per unit (training iteration on one GPU, or one image) at the configured size, timed here
    (mixed precision on CUDA, as the training loop runs)."""
    from hmsa.models import build_model
    from hmsa.models.multiscale import forward_train, predict_multiscale

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda")
    m = model_cfg.model
    model = build_model(m.name, classes, attention=m.attention,
                        explicit_scales=cfgmod.explicit_scales(model_cfg)).to(device)
    if item["kind"] == "train":
        t = item["cfg"].train
        crop = item["cfg"].data.crop
        h, w = (max(32, round(v * scale)) for v in crop)
        x = torch.randn(2, 3, h, w, device=device)
        y = torch.randint(0, classes, (2, h, w), device=device)

        def step() -> None:
            with amp:
                out = forward_train(model, x, t.method, t.scales)
                loss = torch.nn.functional.cross_entropy(out["fused"], y)
            loss.backward()

        # measured with 2 images (BatchNorm needs > 1 in training); a GPU holds 1
        return _median_time(step, steps, device) / 2 * (crop[0] * crop[1]) / (h * w)
    model.eval()
    full_h, full_w = EVAL_SIZE[item["dataset"]]
    h, w = (max(32, round(v * scale)) for v in (full_h, full_w))
    x = torch.randn(1, 3, h, w, device=device)
    with torch.no_grad(), amp:
        return sum(_median_time(lambda s=s: predict_multiscale(model, x, list(s[1]), s[0], s[2]), steps, device)
                   for s in _settings(item)) * (full_h * full_w) / (h * w)


# ---------------------------------------------------------------------------------------------------
# The estimate


def _shown_path(path: Path, project: Path) -> str:
    """The pipeline file as the user knows it: relative to the working directory (or the project),
    never an absolute machine path."""
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    for base in (Path.cwd(), project):
        try:
            return p.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            continue
    return p.name


def _declared_for(stage: str, declared: dict[str, float]) -> float | None:
    """A stage's declared seconds: its own, else its base stage's (``X_seed2`` takes ``X``'s)."""
    from hmsa.orchestration.pipeline import base_stage

    return declared.get(stage, declared.get(base_stage(stage)))


def estimate(pipeline_file: Path, project: Path, workdir: Path, do_measure: bool = False, scale: float = 1.0,
             steps: int = 2, declared: dict[str, float] | None = None) -> dict[str, Any]:
    from hmsa.orchestration.pipeline import expand_seeds

    declared = declared or {}
    raw = yaml.safe_load(Path(pipeline_file).read_text())
    pipeline = expand_seeds(raw)
    cluster = load_cluster(project / pipeline["cluster"])
    work = stage_work(pipeline, project, workdir)
    known = {w["stage"] for w in work} | {*raw["train"], *(raw.get("autolabel") or {}), *raw["evaluate"]}
    unknown = sorted(set(declared) - known)
    if unknown:
        raise BadInputError(f"--declare: no stage named {', '.join(map(repr, unknown))} in {pipeline_file}")
    for stage, sec in declared.items():
        if not (sec > 0 and math.isfinite(sec)):
            raise BadInputError(f"--declare {stage}={sec}: seconds must be positive")
    print(f"hmsa estimate: counting the FLOPs of {len(work)} stages on meta tensors (shapes only; "
          "about a second each)...", file=sys.stderr, flush=True)
    anchor = reference()
    flops_per_s = anchor["tflop_per_s"] * 1e12
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for i, item in enumerate(work, 1):
        classes = CLASSES[item["dataset"]]
        # evaluation / auto-labelling run the model of the stage that trained it
        model_cfg = cfgmod.load(project / pipeline["train"][item["model_stage"]]["experiment"])
        flops = stage_flops(item, model_cfg, classes)
        sec = _declared_for(item["stage"], declared)
        if sec is not None:
            source = "declared"
        elif do_measure:
            print(f"hmsa estimate: [{i}/{len(work)}] measuring {item['stage']} ({item['kind']}, "
                  f"{model_cfg.model.name}) on {device.type}...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            torch.manual_seed(0)
            sec = measure(item, classes, scale, steps, model_cfg, device)
            source = f"measured on {device.type}" + (f" at {scale:g}x size, scaled by pixels" if scale != 1 else "")
            print(f"hmsa estimate: [{i}/{len(work)}] {item['stage']}: {sec:.3f} s per unit "
                  f"(took {time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        else:
            sec, source = flops / flops_per_s, "derived"
        gpus = _gpus(cluster, item["stage"], item["kind"])
        per_gpu = item["units"] if item["kind"] == "train" else math.ceil(item["units"] / gpus)
        wall = per_gpu * sec / 3600
        rows.append({"stage": item["stage"], "kind": item["kind"], "model": model_cfg.model.name,
                     "units": item["units"], "tflop_per_unit": flops / 1e12, "seconds_per_unit": sec,
                     "gpus": gpus, "wall_hours": wall, "gpu_hours": wall * gpus, "source": source})
    total = {"gpu_hours": sum(r["gpu_hours"] for r in rows),
             "wall_hours_sequential": sum(r["wall_hours"] for r in rows)}
    return {"pipeline": _shown_path(Path(pipeline_file), project), "seeds": pipeline["seeds"],
            "anchor": anchor, "stages": rows, "total": total}


def table(result: dict[str, Any]) -> str:
    from tabulate import tabulate

    head = ["stage", "kind", "model", "units", "TFLOP/unit", "s/unit", "GPUs", "wall h", "GPU-h", "source"]
    body = [[r["stage"], r["kind"], r["model"], r["units"], f"{r['tflop_per_unit']:.2f}",
             f"{r['seconds_per_unit']:.3f}", r["gpus"], f"{r['wall_hours']:.2f}", f"{r['gpu_hours']:.1f}",
             r["source"]] for r in result["stages"]]
    t = result["total"]
    body.append(["total", "", "", "", "", "", "", f"{t['wall_hours_sequential']:.2f}", f"{t['gpu_hours']:.1f}", ""])
    text = tabulate(body, head, tablefmt="github", disable_numparse=True,
                    colalign=("left", "left", "left", "right", "right", "right", "right", "right", "right", "left"))
    return text + "\n\n" + "\n".join(footer(result))


def footer(result: dict[str, Any]) -> list[str]:
    """What the figures above are: the total, then one line per kind of source actually used."""
    t, a = result["total"], result["anchor"]
    stages = result["stages"]
    lines = [f"total: {t['gpu_hours']:.1f} GPU-hours, {t['wall_hours_sequential']:.1f} h wall if the stages ran "
             f"one after another (seeds: {', '.join(map(str, result['seeds']))})"]
    measured = sorted({r["source"] for r in stages if r["source"].startswith("measured")})
    by_kind = {k: [r["stage"] for r in stages if r["source"].startswith(k)]
               for k in ("declared", "measured", "derived")}
    if by_kind["declared"]:
        lines.append(f"declared ({len(by_kind['declared'])} stage(s)): seconds per unit given with --declare")
    if by_kind["measured"]:
        lines.append(f"measured ({len(by_kind['measured'])} stage(s)): timed here with --measure, "
                     f"{'; '.join(m[len('measured '):] for m in measured)}")
    if by_kind["derived"]:
        lines.append(f"derived ({len(by_kind['derived'])} stage(s)): FLOPs / {a['tflop_per_s']:.2f} TFLOP/s, the "
                     f"throughput of the paper's one timing (Table 1: {a['what']}: {a['tflop']:.2f} "
                     f"TFLOP in {a['seconds']:.2f} s); --measure on your GPU node replaces it")
        lines.append("FLOPs: convolutions and matrix products, forward (+ backward for training), counted by "
                     "torch FlopCounterMode on meta tensors")
    lines.append("units: training iterations of one GPU, or images; wall time assumes perfect DDP scaling")
    return lines
