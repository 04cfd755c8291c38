"""P2 (issue 3): N-scale hierarchical inference time / the sum of its single-scale forwards
(target <= 1.05: the fusion itself must cost next to nothing).

    .venv/bin/python benchmarks/inference_overhead.py [--model hrnet_ocr_tiny] [--size 256 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from hmsa.models import build_model  # noqa: E402
from hmsa.models.multiscale import predict_multiscale, scaled  # noqa: E402


def timed(fn: object, repeats: int) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="hrnet_ocr_tiny")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 512])
    ap.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0, 2.0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/inference_overhead.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(args.model, 19).eval()
    x = torch.randn(1, 3, *args.size)
    inputs = {s: scaled(x, s) for s in args.scales}
    with torch.no_grad():
        model(x)  # warm-up
        singles = {s: timed(lambda s=s: model(inputs[s]), args.repeats) for s in args.scales}
        fused = timed(lambda: predict_multiscale(model, x, args.scales, "hierarchical"), args.repeats)
    result = {
        "model": args.model, "input": [1, 3, *args.size], "scales": args.scales, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "single_scale_seconds": {str(k): v for k, v in singles.items()},
        "hierarchical_seconds": fused, "sum_single_seconds": sum(singles.values()),
        "overhead_ratio": fused / sum(singles.values()), "target": 1.05,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
