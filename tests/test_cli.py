"""The command line a user meets first: `hmsa --help` lists the user commands, then the plumbing apart;
every option says what it is; `--version`; start-up imports nothing heavy; `hmsa evaluate` leaves the
flat metrics file DVC reads."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from hmsa.cli import main
from hmsa.cli_args import PLUMBING, build_parser

ROOT = Path(__file__).resolve().parents[1]
HMSA = [sys.executable, "-m", "hmsa"]
USER_COMMANDS = ["data", "train", "evaluate", "autolabel", "score", "estimate", "compare", "version"]


def _parsers(parser: argparse.ArgumentParser, path: str = "hmsa") -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)parser, with the words that reach it."""
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _parsers(sub, f"{path} {name}")
    return out


def test_help_lists_user_commands_then_plumbing() -> None:
    out = subprocess.run([*HMSA, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    commands, plumbing = text.split("\ncommands", 1)[1].split("\nplumbing", 1)
    listed = [line.split()[0] for line in commands.splitlines()[1:] if line.startswith("  ")]
    assert listed == USER_COMMANDS
    assert [line.split()[0] for line in plumbing.splitlines()[1:] if line.startswith("  ")] == [n for n, _ in PLUMBING]
    for line in commands.splitlines()[1:] + plumbing.splitlines()[1:]:  # one line each, with a help text
        if line.strip():
            assert line.startswith("  ") and len(line.split()) > 2, line
    assert "``" not in text and ":func:" not in text and ".. " not in text  # no RST


def test_every_option_and_argument_has_help() -> None:
    missing = [f"{path}: {a.option_strings or a.dest}" for path, p in _parsers(build_parser()) for a in p._actions
               if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert missing == []
    # the options the issue named, in particular
    helps = {(path, opt): a.help for path, p in _parsers(build_parser()) for a in p._actions
             for opt in a.option_strings}
    for key in [("hmsa train", "--run-dir"), ("hmsa evaluate", "--out-dir"), ("hmsa evaluate", "--model"),
                ("hmsa autolabel", "--manifest"), ("hmsa submit", "--stage")]:
        assert helps[key] and len(helps[key]) > 10, key


def test_each_command_is_named_in_its_own_usage() -> None:
    for path, p in _parsers(build_parser()):
        if path != "hmsa":
            assert p.format_usage().startswith(f"usage: {path} "), p.format_usage()


def test_version_from_package_metadata() -> None:
    out = subprocess.run([*HMSA, "--version"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == f"hmsa {version('hmsa')}"


def test_start_up_imports_nothing_heavy() -> None:
    code = ("import sys\nfrom hmsa.cli import main\n"
            "for argv in (['--help'], ['--version'], ['compare', '-h'], ['estimate', '-h']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'mlflow', 'pandas', 'matplotlib', 'timm', 'numpy', 'snakemake')"
            " if m in sys.modules]\nprint('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"


def _fake_evaluation(miou: dict[str, float]) -> object:
    def run(dataset, root, split, model, settings, out_dir, *args, **kw):  # noqa: ANN001, ANN202, ARG001
        assert not (Path(out_dir) / "dvc_metrics.json").exists(), "a stale metrics file survived"
        return {"dataset": dataset, "split": split, "images": 3, "settings": {
            s.name: {"method": s.method, "scales": list(s.scales), "flip": s.flip, "miou": miou[s.name],
                     "pixel_accuracy": 0.9, "per_class": {"road": 0.5, "sky": None}} for s in settings}}
    return run


def _evaluate(tmp_path: Path, *settings: str) -> int:
    argv = ["evaluate", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model", str(tmp_path / "m.pt"),
            "--out-dir", str(tmp_path / "eval")]
    for s in settings:
        argv += ["--setting", s]
    return main(argv)


def test_evaluate_writes_flat_dvc_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """mIoU in percent per setting, spelled as in the configs, and nothing else (no ids, paths, classes)."""
    import hmsa.evaluation.evaluate as evaluate

    monkeypatch.setenv("HMSA_TRACKING", "0")
    out = tmp_path / "eval/dvc_metrics.json"
    out.parent.mkdir()
    out.write_text('{"stale": {"miou": 1}}')
    monkeypatch.setattr(evaluate, "run_evaluation", _fake_evaluation(
        {"hierarchical_0.5-1-2_flip": 0.712345, "single_1": 0.5}))
    assert _evaluate(tmp_path, "hierarchical:0.5,1,2:flip", "single:1") == 0
    assert json.loads(out.read_text()) == {"hierarchical:0.5,1,2:flip": {"miou": 71.23}, "single:1": {"miou": 50.0}}

    # a failed evaluation leaves no metrics file behind (the stale one is gone before it starts)
    def fail(*args, **kw):  # noqa: ANN002, ANN003, ANN202, ARG001
        raise FileNotFoundError("model.pt: not found")

    monkeypatch.setattr(evaluate, "run_evaluation", fail)
    assert _evaluate(tmp_path, "single:1") == 2
    assert not out.exists()
