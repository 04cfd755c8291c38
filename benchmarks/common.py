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
