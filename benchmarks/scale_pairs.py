"""Does the learned attention beat plain averaging of the same model's scales, on the scale pair it was
trained on and on the pair it was not? Hierarchical attention trains on {0.5, 1.0} only (section 3) and
is chained to 2.0 at inference, trusting that what the attention learned between 0.5 and 1.0 holds
between 1.0 and 2.0. For each finished run, the Table 1 hierarchical model (DeepLabV3+, Mapillary val)
and the teacher (HRNet-OCR, Cityscapes val) are scored on the same images with attention and with
averaging over {0.5,1}, {1,2} and {0.5,1,2}, no flip, and at 1.0 alone. Writes
reports/benchmarks/scale_pairs.json.

    .venv/bin/python benchmarks/scale_pairs.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, embedded_scenes, write_result  # noqa: E402

MODELS = {"table1_hierarchical": ("mapillary", "validation"), "cityscapes_teacher": ("cityscapes", "val")}
PAIRS = {"trained pair {0.5,1}": "0.5,1", "untrained pair {1,2}": "1,2", "all three {0.5,1,2}": "0.5,1,2"}


def measure(run: Path) -> dict:
    """mIoU of each model of one run, by fusion and scale set (see the module docstring)."""
    from hmsa.evaluation.evaluate import run_evaluation
    from hmsa.evaluation.settings import parse_setting

    seed = embedded_scenes(run)["seed"]
    out: dict = {"data_seed": seed, "models": {}}
    for stage, (dataset, split) in MODELS.items():
        specs = ["single:1", *(f"{m}:{s}" for s in PAIRS.values() for m in ("hierarchical", "avgpool"))]
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_evaluation(dataset, run / "data/embedded" / dataset, split,
                                     run / "results" / stage / "model.pt",
                                     [parse_setting(s) for s in specs], Path(tmp))
        miou = {spec: round(100 * metrics["settings"][parse_setting(spec).name]["miou"], 2) for spec in specs}
        out["models"][stage] = {
            "dataset": f"{dataset} {split}", "images": metrics["images"], "single 1.0": miou["single:1"],
            **{pair: {"attention": miou[f"hierarchical:{s}"], "averaging": miou[f"avgpool:{s}"],
                      "attention - averaging": round(miou[f"hierarchical:{s}"] - miou[f"avgpool:{s}"], 2)}
               for pair, s in PAIRS.items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="working directories of finished pipeline runs")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/scale_pairs.json")
    args = ap.parse_args()
    os.environ["HMSA_TRACKING"] = "0"  # a measurement, not a run to compare in MLflow
    torch.set_num_threads(2)
    runs = sorted((measure(run) for run in args.runs), key=lambda r: r["data_seed"])
    write_result(args.out, {"what": "mIoU of one model with hierarchical attention vs averaging of its own "
                                    "per-scale logits, on the scale pair attention trains on and on the one "
                                    "it is chained to at inference (no flip)", "runs": runs})


if __name__ == "__main__":
    main()
