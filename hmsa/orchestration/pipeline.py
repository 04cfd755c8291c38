"""Checks of a pipeline config (configs/pipeline/*.yaml) run by the Snakefile before anything else:
the JSON schema, then the cross-references the schema cannot express. One line names the file and
the key, instead of a schema dump or a missing-input error three rules later."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from hmsa.errors import BadInputError, HmsaError


class PipelineConfigError(HmsaError, ValueError):
    pass


def _schema_errors(config: dict, schema_path: Path) -> list[str]:
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for e in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in e.absolute_path) or "<top level>"
        out.append(f"'{where}': {e.message}")
    return out


def _reference_errors(config: dict) -> list[str]:
    from hmsa.evaluation.settings import Setting, parse_setting

    train, autolabel, evaluate = config["train"], config.get("autolabel") or {}, config["evaluate"]
    out = []
    for name, st in train.items():
        if st.get("init") and st["init"] not in train:
            out.append(f"'train.{name}.init': no training stage named {st['init']!r}")
        if st.get("autolabels") and st["autolabels"] not in autolabel:
            out.append(f"'train.{name}.autolabels': no autolabel stage named {st['autolabels']!r}")
    for name, st in autolabel.items():
        if st["teacher"] not in train:
            out.append(f"'autolabel.{name}.teacher': no training stage named {st['teacher']!r}")

    def setting(text: str, where: str) -> Setting | None:
        try:
            return parse_setting(text)
        except BadInputError as exc:  # "--setting 'x': why" -> "'<key>': 'x': why"
            out.append(f"'{where}': {str(exc).removeprefix('--setting ')}")
            return None

    parsed: dict[str, list[Setting | None]] = {}
    for name, ev in evaluate.items():
        if ev["model"] not in train:
            out.append(f"'evaluate.{name}.model': no training stage named {ev['model']!r}")
        parsed[name] = [setting(text, f"evaluate.{name}.settings[{i}]") for i, text in enumerate(ev["settings"])]
    for table, rows in (config.get("tables") or {}).items():
        for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
            wanted = setting(row["setting"], f"tables.{table}[{i}].setting")
            if row["evaluation"] not in evaluate:
                out.append(f"'tables.{table}[{i}].evaluation': no evaluation named {row['evaluation']!r}")
            elif wanted is not None and wanted not in parsed[row["evaluation"]]:
                out.append(f"'tables.{table}[{i}].setting': {row['setting']!r} is not among "
                           f"evaluate.{row['evaluation']}.settings")
    return out


def check(config: dict, schema_path: Path, sources: list[str]) -> None:
    """Raise one line naming the config file(s) and the first offending key."""
    source = ", ".join(str(s) for s in sources) or "config"
    errors = _schema_errors(config, schema_path) or _reference_errors(config)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PipelineConfigError(f"{source}: {errors[0]}{more}")


def seed_stage(base: str, seed: int) -> str:
    """The stage name of ``base`` trained with ``seed``: seed 0 keeps the plain name."""
    return base if seed == 0 else f"{base}_seed{seed}"


def base_stage(stage: str) -> str:
    """The stage a per-seed copy was made from (:func:`seed_stage` undone): ``X_seed2`` -> ``X``."""
    return re.sub(r"_seed[0-9]+$", "", stage)


def expand_seeds(config: dict) -> dict:
    """One training stage per seed in ``config["seeds"]`` (default [0]) for every training stage whose
    ``per_seed`` is not false, with what depends on it: its auto-labelling (the teacher of seed k makes
    the labels that the stages of seed k train on), the stages it initialises, its evaluations. A stage
    with ``per_seed: false`` runs once, with the first seed (and the first seed's inputs).
    Returns a new config; ``seed_runs`` maps each evaluation of the original config to its per-seed
    evaluations (the tables' rows name the original ones)."""
    seeds = list(config.get("seeds") or [0])
    train, autolabel = config["train"], config.get("autolabel") or {}
    # which seeds each stage runs with; an auto-labelling stage runs with its teacher's seeds
    runs_with: dict[str, list[int]] = {n: seeds if st.get("per_seed", True) else seeds[:1]
                                        for n, st in train.items()}
    for n, st in autolabel.items():
        runs_with[n] = runs_with[st["teacher"]]

    def ref(base: str, seed: int) -> str:
        return seed_stage(base, seed if seed in runs_with[base] else runs_with[base][0])

    out = {k: v for k, v in config.items() if k not in ("train", "autolabel", "evaluate")}
    out["seeds"] = seeds
    out["train"], out["autolabel"], out["evaluate"], out["seed_runs"] = {}, {}, {}, {}
    for name, st in train.items():
        for seed in runs_with[name]:
            new = {k: v for k, v in st.items() if k != "per_seed"} | {"seed": seed}
            for key in ("init", "autolabels"):
                if st.get(key):
                    new[key] = ref(st[key], seed)
            out["train"][seed_stage(name, seed)] = new
    for name, st in autolabel.items():
        for seed in runs_with[name]:
            out["autolabel"][seed_stage(name, seed)] = {**st, "teacher": ref(st["teacher"], seed)}
    for name, ev in config["evaluate"].items():
        names = []
        for seed in runs_with[ev["model"]]:
            out["evaluate"][seed_stage(name, seed)] = {**ev, "model": ref(ev["model"], seed)}
            names.append(seed_stage(name, seed))
        out["seed_runs"][name] = names
    clash = set(out["train"]) & set(out["evaluate"]) | set(out["train"]) & set(out["autolabel"])
    if len(out["train"]) + len(out["autolabel"]) + len(out["evaluate"]) != len(
            set(out["train"]) | set(out["autolabel"]) | set(out["evaluate"])) or clash:
        raise PipelineConfigError("stage names clash once seeds are added (a stage named like '<stage>_seed<N>'?)")
    return out


def stage_priorities(config: dict) -> dict[str, int]:
    """Snakemake ``priority`` of each training and auto-labelling stage of an expanded config: the number
    of training stages on the longest chain that waits for it (``init`` or auto-labels). Snakemake
    otherwise starts whichever ready job it likes: in the embedded run it trained Table 2's avg-pooling
    baseline and Table 4's model while the teacher, on whose auto-labels three stages wait, stood
    ready, and the run's tail was those three one after another on two cores."""
    train, autolabel = config["train"], config.get("autolabel") or {}
    waits_for: dict[str, list[str]] = {name: [] for name in (*train, *autolabel)}
    for name, st in train.items():
        for key in ("init", "autolabels"):
            if st.get(key) in waits_for:
                waits_for[st[key]].append(name)
    for name, st in autolabel.items():
        if st["teacher"] in waits_for:
            waits_for[st["teacher"]].append(name)
    depth: dict[str, int] = {}

    def chain(name: str) -> int:  # training stages after ``name`` on its longest chain (the DAG is acyclic)
        if name not in depth:
            depth[name] = max((chain(d) + (d in train) for d in waits_for[name]), default=0)
        return depth[name]

    return {name: chain(name) for name in waits_for}
