"""Re-measure issue #15's tables: run every hostile case of ``tests/faults/test_*.py`` (their ``CASES``)
and count, per area, how many were tried and how each ended: a one-line error naming the file or key,
a traceback, an unclear error (several lines, or one that names nothing, or one that leaves an output
looking finished) or silently accepted (exit 0).

Each case runs in a fresh temp dir with a private copy of a small generated embedded dataset, tracking
off unless the case turns it on. Built to run on any checkout, including one where the cases still
fail: that is what it counts. Writes ``reports/benchmarks/bad_input.json`` (no machine paths).

    python benchmarks/bad_input.py [--only AREA ...] [--out reports/benchmarks/bad_input.json]
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `tests.faults` and `benchmarks` importable

from benchmarks.common import ROOT, write_result  # noqa: E402

KINDS = ("one-line", "traceback", "unclear", "silently accepted")


def _areas(only: list[str]) -> dict[str, list[Any]]:
    """area (the test file's name without ``test_``) -> its CASES."""
    out = {}
    for path in sorted((ROOT / "tests" / "faults").glob("test_*.py")):
        area = path.stem.removeprefix("test_")
        if only and area not in only:
            continue
        module = importlib.import_module(f"tests.faults.{path.stem}")
        cases = getattr(module, "CASES", None)
        if cases:
            out[area] = list(cases)
    return out


def _dataset(where: Path) -> Path:
    """The small embedded dataset the tests use (tests/conftest.py: embedded_data), generated once."""
    from hmsa.data.synth import generate

    root = where / "embedded"
    generate(root, seed=0, cityscapes_counts={"train": 4, "val": 2, "train_extra": 3},
             mapillary_counts={"training": 4, "validation": 2}, size=(64, 128))
    return root


def _scrub(text: str, tmp: Path) -> str:
    """The case's stderr, first line only, without the machine's paths."""
    line = (text.strip().splitlines() or [""])[-1 if "Traceback" in text else 0]
    return line.replace(str(tmp), "<tmp>").replace(str(ROOT), "<repo>")[:300]


def run_case(case: Any, base: Path, dataset: Path) -> tuple[str, str, float]:
    from tests.faults.cases import classify, run

    tmp = Path(tempfile.mkdtemp(prefix="case-", dir=base))
    data = tmp / "data"
    shutil.copytree(dataset, data)  # cases damage their data
    t0 = time.monotonic()
    out = run(case, tmp, data)
    seconds = time.monotonic() - t0
    kind = classify(case, out, tmp, data)
    detail = _scrub(out.stderr, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    return kind, detail, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], help="an area (test file without test_), repeatable")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "bad_input.json")
    a = p.parse_args(argv)
    os.environ["HMSA_TRACKING"] = "0"  # a case turns it on in its own env when it needs it
    os.environ.setdefault("HMSA_LOG_LEVEL", "WARNING")
    areas = _areas(a.only)
    result: dict[str, Any] = {"areas": {}, "total": dict.fromkeys(("tried", *KINDS), 0)}
    with tempfile.TemporaryDirectory(prefix="hmsa-bad-input-") as base:
        dataset = _dataset(Path(base))
        for area, cases in areas.items():
            counts = dict.fromkeys(("tried", *KINDS), 0)
            rows = []
            for case in cases:
                kind, detail, seconds = run_case(case, Path(base), dataset)
                counts["tried"] += 1
                counts[kind] += 1
                rows.append({"case": case.name, "outcome": kind, "stderr": detail, "seconds": round(seconds, 2)})
                print(f"{area:<16} {kind:<18} {case.name}", flush=True)
            result["areas"][area] = {**counts, "cases": rows}
            for k, v in counts.items():
                result["total"][k] += v
    print("\n" + " ".join(f"{k}: {v}" for k, v in result["total"].items()))
    write_result(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
