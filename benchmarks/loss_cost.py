"""What the paper's RMI loss costs on CPU against cross-entropy, in the embedded Cityscapes stages.

Two figures, each for both losses, measured interleaved (CE, RMI, CE, RMI, ...) so both see the same
machine state, min / median / max over ``--repeats``:

- ``loss``: the main loss alone, forward + backward on the fused logits (batch × 19 × H × W);
- ``step``: one whole training step of the embedded teacher as the pipeline runs it (``hrnet_ocr_tiny``
  with hierarchical attention on the scale pair {0.5, 1.0}, auxiliary cross-entropy 0.4, SGD), on the
  threads the local profile gives a stage (1).

The step ratio is what a Cityscapes stage of the embedded pipeline would pay for ``train.loss: rmi``.

    .venv/bin/python benchmarks/loss_cost.py [--batch 4] [--size 128 256] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import spread, write_result  # noqa: E402

from hmsa.models import build_model  # noqa: E402
from hmsa.models.multiscale import forward_train  # noqa: E402
from hmsa.training.losses import main_loss, total_loss  # noqa: E402

LOSSES = ("cross_entropy", "rmi")
NUM_CLASSES = 19


def _timed(fn: Callable[[str], None], kind: str) -> float:
    t0 = time.perf_counter()
    fn(kind)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, nargs=2, default=[128, 256])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/loss_cost.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    h, w = args.size
    images = torch.randn(args.batch, 3, h, w)
    # Labels with a quarter ignored, as a coarse image's unlabelled border makes them.
    target = torch.randint(0, NUM_CLASSES, (args.batch, h, w))
    target[:, :, : w // 4] = 255
    logits = torch.randn(args.batch, NUM_CLASSES, h, w)
    models = {k: build_model("hrnet_ocr_tiny", NUM_CLASSES, attention=True) for k in LOSSES}
    models["rmi"].load_state_dict(models["cross_entropy"].state_dict())  # the same weights for both
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}

    def loss_only(kind: str) -> None:
        x = logits.clone().requires_grad_(True)
        main_loss(kind, x, target).backward()

    def train_step(kind: str) -> None:
        out = forward_train(models[kind], images, "hierarchical", [0.5, 1.0])
        loss, _ = total_loss(out, target, kind, aux_weight=0.4, scale_weight=0.0)
        opts[kind].zero_grad(set_to_none=True)
        loss.backward()
        opts[kind].step()

    load_before = os.getloadavg()[0]
    times: dict[str, dict[str, list[float]]] = {"loss": {k: [] for k in LOSSES}, "step": {k: [] for k in LOSSES}}
    for i in range(args.repeats + 1):  # round 0 warms up
        for kind in LOSSES:
            t_loss = _timed(loss_only, kind)
            t_step = _timed(train_step, kind)
            if i > 0:
                times["loss"][kind].append(t_loss)
                times["step"][kind].append(t_step)
    result = {
        "logits": [args.batch, NUM_CLASSES, h, w],
        "model": "hrnet_ocr_tiny, hierarchical attention, scales [0.5, 1.0], aux cross-entropy 0.4",
        "threads": args.threads,
        # Re-measured by others on a busy machine: the load says how busy it was.
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "repeats": args.repeats,
        "seconds": {what: {k: spread(v, 4) for k, v in per.items()} for what, per in times.items()},
        "median_ratio_rmi_over_cross_entropy": {
            what: round(statistics.median(per["rmi"]) / statistics.median(per["cross_entropy"]), 2)
            for what, per in times.items()},
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
