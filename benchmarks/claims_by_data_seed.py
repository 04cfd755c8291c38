"""Do the paper's findings hold on every generated dataset, not only the one the defaults draw? The
issue's target: "every claim holds in the default run for any data seed". Reads finished pipeline runs
(one per data seed, e.g. from ``benchmarks/pipeline.py --data-seed N --workdir DIR``) and writes, per
run, what its report concluded: the claims table (paper's Δ, ours, verdict), Tables 1-2, the teacher's
single-scale mIoU, the auto-labels' quality beside the coarse labels', and how many losses are flat;
then each claim's verdict over the runs. Only runs whose data this checkout's generator draws count,
and each run's code commits (from its MLflow runs) are listed. Writes
reports/benchmarks/claims_by_data_seed.json.

    .venv/bin/python benchmarks/claims_by_data_seed.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, embedded_scenes, write_result  # noqa: E402


def _csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise SystemExit(f"{path}: missing (is the run finished? `hmsa report` writes it)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _commits(run: Path) -> list[str]:
    """The git commits the run's MLflow runs were made by (a resumed run can hold several)."""
    import mlflow

    db = run / "mlflow.db"
    if not db.is_file():
        return []
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=5000) if ids else []
    return sorted({r.data.tags["hmsa.git_commit"][:7] for r in runs if "hmsa.git_commit" in r.data.tags})


def _row_name(row: dict[str, str]) -> str:
    if "MS attention" in row:  # Table 2
        return (f"{'attention' if row['MS attention'] == 'True' else 'avg pooling'} + "
                f"{'auto-labels' if row['auto-labelling'] == 'True' else 'coarse'}")
    return f"{row['method']} {{{row['eval scales']}}}"


def _table(rows: list[dict[str, str]]) -> dict[str, Any]:
    return {_row_name(r): {"ours": float(r["ours mIoU"]), "paper": float(r["paper mIoU"]),
                                           "std": float(r["ours std"]) if r["ours std"] else None}
            for r in rows}


def summarise(run: Path) -> dict[str, Any]:
    """What one finished run concluded (see the module docstring)."""
    drawn = embedded_scenes(run)
    config = run / "pipeline-config.yaml"
    cfg = yaml.safe_load(config.read_text()) if config.is_file() else {}
    results, reports = run / cfg.get("results", "results"), run / cfg.get("reports", "reports")
    claims = _csv(reports / "claims.csv")
    teacher = json.loads((results / "evaluate_table2_attention_coarse/metrics.json").read_text())
    quality = json.loads((results / "autolabel/manifest.json").read_text())["quality"]["sources"]
    verdicts = [r["verdict"] for r in _csv(reports / "convergence.csv")]
    return {
        "data_seed": drawn["seed"], "pipeline": cfg.get("name", "embedded"), "commits": _commits(run),
        "training_seeds": max(int(r["seeds"]) for r in claims),
        "claims": [{"claim": r["claim"], "paper": float(r["paper Δ"]), "ours": float(r["ours Δ (mean)"]),
                    "std": float(r["ours Δ (std)"]) if r["ours Δ (std)"] else None, "verdict": r["verdict"]}
                   for r in claims],
        "all_claims_hold": all(r["verdict"].startswith("holds") for r in claims),
        "table1": _table(_csv(reports / "table1.csv")),
        "table2": _table(_csv(reports / "table2.csv")),
        "teacher_single_scale_miou": round(100 * teacher["settings"]["single_1"]["miou"], 2),
        "labels_of_the_coarse_images": {
            src: {k: round(100 * quality[src][k], 2) for k in ("coverage", "accuracy", "accuracy_both")}
            for src in ("coarse", "autolabel")},
        "losses_flat": f"{verdicts.count('flat')} of {len(verdicts)}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="working directories of finished pipeline runs")
    ap.add_argument("--out", type=Path, default=ROOT / "reports/benchmarks/claims_by_data_seed.json")
    args = ap.parse_args()
    runs = sorted((summarise(run) for run in args.runs), key=lambda r: (r["training_seeds"], r["data_seed"]))
    over = {c["claim"]: {"paper": c["paper"], "ours": {}, "verdicts": {}} for c in runs[0]["claims"]}
    keys = [f"data seed {r['data_seed']}, {r['training_seeds']} training seed(s)" for r in runs]
    if len(set(keys)) < len(keys):
        raise SystemExit("two runs of the same data seed and seed count: give one of each")
    for key, r in zip(keys, runs, strict=True):
        for c in r["claims"]:
            over[c["claim"]]["ours"][key] = c["ours"]
            over[c["claim"]]["verdicts"][key] = c["verdict"]
    write_result(args.out, {
        "what": "the claims table of finished embedded runs, one per data seed (Δ in mIoU points)",
        "runs_summarised": len(runs),
        "claims_holding_in_every_run": sum(
            all(v.startswith("holds") for v in c["verdicts"].values()) for c in over.values()),
        "claims": len(over), "by_claim": over, "runs": runs})


if __name__ == "__main__":
    main()
