"""P3 (issue 5): bytes per image of the hard auto-labels as stored (uint8 PNG) / soft float32 labels
(19 × H × W × 4 bytes), measured on the labels an `autolabel` stage wrote (section 4: soft labels
for 20,000 Cityscapes images would take 3.2 TB). Writes reports/benchmarks/autolabel_storage.json.

    .venv/bin/python benchmarks/autolabel_storage.py [--labels runs/autolabel/labels]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_result  # noqa: E402


def _where(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else "auto-labels outside the checkout"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--labels", type=Path, default=ROOT / "runs/autolabel/labels")
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/autolabel_storage.json")
    args = ap.parse_args()
    files = sorted(args.labels.rglob("*_gtCoarse_labelIds.png"))
    if not files:
        print(f"{args.labels}: no auto-labels (run `make reproduce` first)", file=sys.stderr)
        return 2
    stored = sum(f.stat().st_size for f in files)
    soft = 0
    for f in files:
        w, h = Image.open(f).size
        soft += args.classes * h * w * 4
    result = {"images": len(files), "image_size": [h, w], "hard_bytes_per_image": stored / len(files),
              "soft_float32_bytes_per_image": soft / len(files), "ratio": soft / stored, "target_ratio": 500,
              # what was measured, not where: the labels' place relative to the checkout when inside it
              "labels": _where(args.labels)}
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
