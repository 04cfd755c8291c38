"""Does scale matter both ways in the embedded scenes, as the paper's Figure 1 says? A trained Cityscapes
model of a finished pipeline run on the embedded val split, at single scales 0.5 / 1.0 / 2.0 and fused over
{0.5, 1, 2} (hierarchically for an attention model, else by averaging):

- *fine detail* (a high scale wins): IoU of the thin classes (pole, traffic light, traffic sign, bicycle);
- *context* (a low scale wins): road/sidewalk accuracy on the ground in deep shadow, where asphalt and
  paving look alike and only the kerbs outside the shadow tell which is which; beside it, the same on
  lit ground, where each has a local cue; and by how far (px) the shadowed pixel lies from lit ground,
  since deep inside a shadow only far context tells.

The generator knows which pixels are in shadow: the scenes are drawn again from the run's data seed.
Writes reports/benchmarks/scale_cases.json (one entry per run directory given).

    .venv/bin/python benchmarks/scale_cases.py RUN_DIR [RUN_DIR ...] [--stage cityscapes_teacher]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, embedded_scenes, write_result  # noqa: E402

SCALES = [0.5, 1.0, 2.0]
THIN = {"pole": 5, "traffic light": 6, "traffic sign": 7, "bicycle": 18}  # trainIds
GROUND = (0, 1)  # road, sidewalk
# Shadowed ground by its distance (px of the 128x256 image) to the nearest lit ground, where the kerbs and
# the colours still tell road from sidewalk: the deeper in, the further a model must look for context.
DEPTHS = ((0, 8), (8, 16), (16, 32), (32, None))


def _depth(d: tuple[int, int | None]) -> str:
    return f"{d[0]}-{d[1]}" if d[1] else f">={d[0]}"


def measure(run: Path, stage: str) -> dict:
    """The figures of one run's ``stage`` model (see the module docstring)."""
    from hmsa.data import build_dataset
    from hmsa.data.transforms import eval_transform
    from hmsa.evaluation.evaluate import load_model
    from hmsa.evaluation.metrics import confusion, iou_per_class
    from hmsa.models.multiscale import predict_multiscale_with_maps

    data, drawn = run / "data/embedded", embedded_scenes(run)
    ds = build_dataset("cityscapes", data / "cityscapes", "val", transform=eval_transform())
    model, meta = load_model(run / "results" / stage / "model.pt", torch.device("cpu"))
    fusion = "hierarchical" if meta.get("attention") else "avgpool"
    keys = [*(str(s) for s in SCALES), f"{fusion} 0.5,1,2"]
    parts = ["shade", "lit", *(_depth(d) for d in DEPTHS)]
    counts = {k: {part: [0, 0] for part in parts} for k in keys}
    confs = {k: torch.zeros(meta["num_classes"], meta["num_classes"], dtype=torch.int64) for k in keys}
    with torch.no_grad():
        for i in range(len(ds)):
            sample = ds[i]
            shade = drawn["canvases"][sample["name"]].shade
            truth = sample["label"].numpy()
            ground = np.isin(truth, GROUND)
            depth = distance_transform_edt(~(ground & ~shade))
            masks = {"shade": ground & shade, "lit": ground & ~shade}
            masks.update({_depth(d): ground & shade & (depth >= d[0]) & (depth < (d[1] or np.inf))
                          for d in DEPTHS})
            fused, maps = predict_multiscale_with_maps(model, sample["image"][None], SCALES, fusion)
            for key, logits in zip(keys, [*(maps[s]["logits"] for s in SCALES), fused], strict=True):
                pred = logits.argmax(1)[0]
                confs[key] += confusion(pred, sample["label"], meta["num_classes"])
                pred = pred.numpy()
                for part, mask in masks.items():
                    counts[key][part][0] += int((pred[mask] == truth[mask]).sum())
                    counts[key][part][1] += int(mask.sum())
    out: dict = {"data_seed": drawn["seed"], "stage": stage, "images": len(ds),
                 "shaded_ground_pixels": counts["1.0"]["shade"][1],
                 "shaded_ground_pixels_by_px_to_lit_ground": {_depth(d): counts["1.0"][_depth(d)][1] for d in DEPTHS},
                 "settings": {}}
    for key, cnt in counts.items():
        iou = iou_per_class(confs[key].numpy())
        thin = {name: round(100 * float(np.nan_to_num(iou[c])), 1) for name, c in THIN.items()}
        out["settings"][key] = {
            "road/sidewalk accuracy in shadow, %": round(100 * cnt["shade"][0] / max(cnt["shade"][1], 1), 1),
            "road/sidewalk accuracy in light, %": round(100 * cnt["lit"][0] / max(cnt["lit"][1], 1), 1),
            "road/sidewalk accuracy in shadow by px to lit ground, %": {
                _depth(d): round(100 * cnt[_depth(d)][0] / max(cnt[_depth(d)][1], 1), 1) for d in DEPTHS},
            "thin IoU, %": thin, "thin mean IoU, %": round(float(np.mean(list(thin.values()))), 1)}
    s = out["settings"]
    out["high scale wins on thin things"] = s["2.0"]["thin mean IoU, %"] > s["0.5"]["thin mean IoU, %"]
    out["low scale wins in shadow"] = (s["0.5"]["road/sidewalk accuracy in shadow, %"]
                                      > s["2.0"]["road/sidewalk accuracy in shadow, %"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="working directories of finished pipeline runs")
    ap.add_argument("--stage", default="cityscapes_teacher", help="the Cityscapes training stage to measure")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/scale_cases.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    runs = [measure(run, args.stage) for run in args.runs]
    write_result(args.out, {"what": "single scales 0.5 / 1.0 / 2.0 and their fusion {0.5,1,2} of one model on "
                                    "embedded val: thin-class IoU and road/sidewalk accuracy in deep shadow",
                            "runs": runs})


if __name__ == "__main__":
    main()
