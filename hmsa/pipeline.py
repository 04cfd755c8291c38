"""Checks of a pipeline config (configs/pipeline/*.yaml) run by the Snakefile before anything else:
the JSON schema, then the cross-references the schema cannot express. One line names the file and
the key, instead of a schema dump or a missing-input error three rules later."""

from __future__ import annotations

from pathlib import Path

import yaml


class PipelineConfigError(ValueError):
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
    from hmsa.evaluation.settings import parse_setting

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
    for name, ev in evaluate.items():
        if ev["model"] not in train:
            out.append(f"'evaluate.{name}.model': no training stage named {ev['model']!r}")
    for table, rows in (config.get("tables") or {}).items():
        for i, row in enumerate(rows if isinstance(rows, list) else [rows]):
            ev = evaluate.get(row["evaluation"])
            if ev is None:
                out.append(f"'tables.{table}[{i}].evaluation': no evaluation named {row['evaluation']!r}")
            elif parse_setting(row["setting"]) not in [parse_setting(s) for s in ev["settings"]]:
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
