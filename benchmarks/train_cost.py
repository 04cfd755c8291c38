"""P1 (issue 3): training cost of explicit attention on {0.5, 1, 2} vs hierarchical on {0.5, 1},
same trunk, measured side by side (alternating steps) in one run. The paper's FLOPs ratio is
5.25 / 1.25 = 4.2x (section 3); targets: >= 3.6x time, >= 3x memory.

Memory is the bytes of the activations autograd saves for backward (each storage once, weights
excluded): what grows with the scales and dominates training memory.

    .venv/bin/python benchmarks/train_cost.py [--model deeplabv3plus_tiny] [--size 128 256] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402

from hmsa.models import build_model  # noqa: E402
from hmsa.models.multiscale import forward_train  # noqa: E402

SETUPS = {"explicit": [0.5, 1.0, 2.0], "hierarchical": [0.5, 1.0]}


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
         method: str) -> tuple[float, int]:
    # Count each saved storage once, and not the weights (autograd saves them too, but they exist
    # once whatever the number of scales).
    params = {p.data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    saved = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            saved += t.untyped_storage().nbytes()
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward_train(model, x, method, SETUPS[method])
        loss = F.cross_entropy(out["fused"], y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0, saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="deeplabv3plus_tiny")
    ap.add_argument("--size", type=int, nargs=2, default=[128, 256])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/train_cost.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, *args.size)
    y = torch.randint(0, 19, (args.batch, *args.size))
    models = {m: build_model(args.model, 19) for m in SETUPS}
    opts = {m: torch.optim.SGD(models[m].parameters(), lr=1e-3, momentum=0.9) for m in SETUPS}
    times: dict[str, list[float]] = {m: [] for m in SETUPS}
    mem: dict[str, int] = {}
    for i in range(args.steps + 1):  # step 0 warms up
        for m in SETUPS:  # alternate so both see the same machine state
            t, saved = step(models[m], opts[m], x, y, m)
            if i > 0:
                times[m].append(t)
            mem[m] = saved
    med = {m: statistics.median(v) for m, v in times.items()}
    result = {
        "model": args.model, "input": [args.batch, 3, *args.size], "steps": args.steps,
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
        "step_seconds_median": med, "saved_activation_bytes": mem,
        "time_ratio": med["explicit"] / med["hierarchical"],
        "memory_ratio": mem["explicit"] / mem["hierarchical"],
        "paper_flops_ratio": 5.25 / 1.25, "targets": {"time_ratio": 3.6, "memory_ratio": 3.0},
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
