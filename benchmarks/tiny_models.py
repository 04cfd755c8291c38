"""The CPU-sized models of the embedded pipeline (``hrnet_ocr_tiny``, ``deeplabv3plus_tiny``; trunks in
hmsa/models/cpu_trunks.py): parameters, FLOPs and the time of one training step.

A step is ``forward_train(model, x, method, scales)``, cross-entropy on ``out["fused"]`` and backward
(no optimiser step), for ``single`` and ``hierarchical`` ({0.5, 1.0}); explicit is left out. Every
(model, crop, method) is timed once per round, rounds interleave them so all see the same machine
state; round 0 warms up and is dropped; min / median / max of the others are reported. FLOPs
(``torch.utils.flop_counter``, forward + backward) do not depend on the machine's load. With
``--former`` the former "tiny" models (hrnet_w18_small + OCR, ResNet-18 DeepLabV3+) are measured too.
Thread counts (``--threads``, default 2 and 1) are switched at run time and interleaved as well.

On a machine other processes load, libgomp's default spin-waiting makes torch's parallel regions wait
for a descheduled thread; ``OMP_WAIT_POLICY`` (read when torch loads) is recorded in the result.

    .venv/bin/python benchmarks/tiny_models.py [--reps 5] [--threads 2 1] [--former]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import spread, write_result  # noqa: E402

from hmsa.models import build_model  # noqa: E402
from hmsa.models.multiscale import forward_train  # noqa: E402

METHODS = {"single": [1.0], "hierarchical": [0.5, 1.0]}
NUM_CLASSES = 19


def _former() -> dict[str, Callable[[], nn.Module]]:
    """The registry's previous "tiny" entries, for comparison."""
    from hmsa.models.deeplab import DeepLabV3Plus
    from hmsa.models.hrnet_ocr import HRNetOCR

    return {
        "former_hrnet_ocr_tiny(hrnet_w18_small)": lambda: HRNetOCR(
            NUM_CLASSES, trunk="hrnet_w18_small", ocr_mid=64, ocr_key=32, head_mid=32),
        "former_deeplabv3plus_tiny(resnet18)": lambda: DeepLabV3Plus(
            NUM_CLASSES, trunk="resnet18", aspp=64, low=16, decoder=64, head_mid=32),
    }


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str) -> float:
    t0 = time.perf_counter()
    out = forward_train(model, x, method, METHODS[method])
    loss = F.cross_entropy(out["fused"], y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    return time.perf_counter() - t0


def gflops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = forward_train(model, x, method, METHODS[method])
        F.cross_entropy(out["fused"], y).backward()
    model.zero_grad(set_to_none=True)
    return round(counter.get_total_flops() / 1e9, 3)


def describe(model: nn.Module) -> dict:
    trunk = model.trunk
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "trunk_parameters": sum(p.numel() for p in trunk.parameters()),
            "trunk_channels": trunk.channels, "trunk_reductions": trunk.reductions}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["hrnet_ocr_tiny", "deeplabv3plus_tiny"])
    ap.add_argument("--former", action="store_true", help="also measure the former tiny models")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crops", nargs="+", default=["64x128", "128x256"], help="HxW")
    ap.add_argument("--reps", type=int, default=5, help="timed rounds after one warm-up round")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                    help="torch intra-op thread counts, interleaved (set at run time)")
    ap.add_argument("--note", default="", help="free text stored with the figures (e.g. what else ran)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/tiny_models.json")
    args = ap.parse_args()
    torch.manual_seed(0)

    builders: dict[str, Callable[[], nn.Module]] = {m: (lambda m=m: build_model(m, NUM_CLASSES)) for m in args.models}
    if args.former:
        builders.update(_former())
    models = {name: build().train() for name, build in builders.items()}
    crops = [tuple(int(v) for v in c.split("x")) for c in args.crops]
    data = {c: (torch.randn(args.batch, 3, *c), torch.randint(0, NUM_CLASSES, (args.batch, *c))) for c in crops}
    cases = [(name, c, meth, th) for name in models for c in crops for meth in METHODS for th in args.threads]

    result_models: dict[str, dict] = {}
    torch.set_num_threads(args.threads[0])
    for name, model in models.items():
        result_models[name] = {**describe(model), "gflops_per_step": {
            f"{c[0]}x{c[1]}": {m: gflops(model, *data[c], m) for m in METHODS} for c in crops}}

    load_before = os.getloadavg()
    times: dict[tuple, list[float]] = {case: [] for case in cases}
    for rnd in range(args.reps + 1):
        for name, c, meth, th in cases:
            torch.set_num_threads(th)
            t = step(models[name], *data[c], meth)
            if rnd > 0:
                times[(name, c, meth, th)].append(t)
    load_after = os.getloadavg()

    for (name, c, meth, th), ts in times.items():
        entry = result_models[name].setdefault("step_seconds", {}).setdefault(f"threads_{th}", {})
        entry.setdefault(f"{c[0]}x{c[1]}", {})[meth] = spread(ts, 4)

    import timm

    result = {
        "what": "one training step: forward_train + cross-entropy on the fused logits + backward",
        "batch": args.batch, "crops": [list(c) for c in crops], "num_classes": NUM_CLASSES,
        "methods": METHODS, "reps": args.reps, "warmup_rounds": 1, "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "loadavg_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "timm": timm.__version__,
        "models": result_models,
    }
    if args.note:
        result["note"] = args.note
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
