"""Shared by the benchmark scripts: every figure goes to reports/benchmarks/<name>.json."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def spread(values: list[float], digits: int) -> dict[str, float]:
    """min / median / max of repeated measurements, rounded: how every benchmark reports a figure."""
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def write_result(out: Path, result: dict[str, Any]) -> None:
    """Stamp, write (pretty JSON) and print a benchmark's figures."""
    result = {**result, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def embedded_scenes(run: Path) -> dict[str, Any]:
    """The Cityscapes val scenes of a finished embedded run, redrawn by this checkout's generator, keyed
    by image name (``city/city_000000_000019``): figures about a run are only this checkout's figures if
    its data is what this generator draws. Exits with one line naming the first image that differs."""
    import numpy as np
    from PIL import Image

    from hmsa.data import synth

    data = run / "data/embedded"
    try:
        generated = json.loads((data / synth.COMPLETE).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{data / synth.COMPLETE}: no finished embedded dataset ({exc})") from exc
    seed, size = int(generated["seed"]), tuple(generated["size"])
    drawn = {}
    for png in sorted((data / "cityscapes/leftImg8bit/val").glob("*/*_leftImg8bit.png")):
        name = f"{png.parent.name}/{png.name.removesuffix('_leftImg8bit.png')}"
        cv = synth.canvas(seed, "cityscapes", "val", int(png.name.split("_")[1]), size)
        if not np.array_equal(np.asarray(Image.open(png)), cv.img.astype(np.uint8)):
            raise SystemExit(f"{png}: not what this checkout's generator draws (older scene code?)")
        drawn[name] = cv
    if not drawn:
        raise SystemExit(f"{data}: no Cityscapes val images")
    return {"seed": seed, "size": size, "canvases": drawn}
