"""Model files of issue #15: a model of another dataset, architecture or class count, a model file
that does not say what it is, missing or foreign ``model.weights`` / ``model.init``, a checkpoint that
does not fit the run; and ``--no-resume`` over a corrupt ``last.pt``. Every reader refuses in one line
naming the file, before writing anything that looks finished."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hmsa.data.labels import CITYSCAPES_CLASSES, MAPILLARY_V12_LABELS
from tests.faults.cases import TINY, Case, check, run

MAPILLARY_READABLE = [lab["readable"] for lab in MAPILLARY_V12_LABELS[:65]]
M = "{tmp}/m.pt"
LAST = "{tmp}/run/checkpoints/last.pt"


def model_file(num_classes: int = 19, arch: str = "hrnet_ocr_tiny", attention: bool = True,
               **meta: Any) -> Callable[[Path], None]:
    """A setup writing ``{tmp}/m.pt``: a tiny model's weights and a meta (``meta`` overrides or, with
    the value ``None``, removes keys)."""

    def setup(tmp: Path) -> None:
        from hmsa.models import build_model

        names = CITYSCAPES_CLASSES if num_classes == 19 else MAPILLARY_READABLE
        full = {"name": arch, "num_classes": num_classes, "attention": attention, "class_names": list(names),
                "dataset": "cityscapes" if num_classes == 19 else "mapillary", "config_hash": "test"}
        full.update(meta)
        weights = build_model(arch, num_classes, attention=attention).state_dict()
        torch.save({"model": weights, "meta": {k: v for k, v in full.items() if v is not None}}, tmp / "m.pt")

    return setup


def _evaluate(*extra: str, setting: str = "single:1", model: str = M) -> list[str]:
    return ["evaluate", "--config", str(TINY), "--model", model, "--out-dir", "{tmp}/eval", "--setting", setting,
            "data.root={data}/cityscapes", *extra]


def _autolabel(*extra: str, model: str = M) -> list[str]:
    return ["autolabel", "--config", str(TINY), "--model", model, "--out-dir", "{tmp}/labels",
            "--manifest", "{tmp}/manifest.json", "data.root={data}/cityscapes", "autolabel.scales=[1.0]",
            "autolabel.method=single", *extra]


def _train(*extra: str) -> list[str]:
    return ["train", "--config", str(TINY), "--run-dir", "{tmp}/run", "--out-model", "{tmp}/run.pt",
            "data.root={data}/cityscapes", *extra]


EVAL_DONE = ("{tmp}/eval/metrics.json", "{tmp}/eval/per_class.csv")
AL_DONE = ("{tmp}/manifest.json",)


def _swapped_last(tmp: Path) -> None:
    """A ``last.pt`` with this run's key but the weights of another class count (swapped in by hand)."""
    from hmsa import config
    from hmsa.models import build_model
    from hmsa.training import checkpoint
    from hmsa.training.state import run_key

    cfg = config.load(TINY, [f"data.root={tmp / 'data' / 'cityscapes'}"])
    model = build_model("hrnet_ocr_tiny", 65, attention=True)
    state = {"model": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "iteration": 2,
             "run_key": run_key(cfg), "mlflow_run_id": ""}
    checkpoint.save(state, checkpoint.last_path(tmp / "run"))


def _corrupt_last(tmp: Path) -> None:
    from hmsa.training import checkpoint

    last = checkpoint.last_path(tmp / "run")
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 truncated by a full disk")


def _deeplab_init(tmp: Path) -> None:
    model_file(arch="deeplabv3plus_tiny")(tmp)


def _not_weights(tmp: Path) -> None:
    (tmp / "trunk.pt").write_text("not a checkpoint at all\n")


CASES = [
    Case("a Mapillary model evaluated on Cityscapes", _evaluate(), names="m.pt", setup=model_file(65),
         unfinished=EVAL_DONE),
    Case("a Mapillary model auto-labels Cityscapes", _autolabel(), names="m.pt", setup=model_file(65),
         unfinished=AL_DONE),
    Case("a Cityscapes model evaluated on Mapillary", _evaluate("data.dataset=mapillary", "data.root={data}/mapillary",
                                                                "eval.split=validation"),
         names="m.pt", setup=model_file(19), unfinished=EVAL_DONE),
    Case("class names of another vocabulary", _evaluate(), names="m.pt",
         setup=model_file(class_names=[f"class{i}" for i in range(19)]), unfinished=EVAL_DONE),
    Case("weights of another class count than the meta says", _evaluate(), names="m.pt",
         setup=lambda tmp: (model_file(65)(tmp), _relabel(tmp, num_classes=19, class_names=CITYSCAPES_CLASSES,
                                                          dataset="cityscapes")),
         unfinished=EVAL_DONE),
    Case("weights of another architecture than the meta says", _evaluate(), names="m.pt",
         setup=lambda tmp: (model_file(19)(tmp), _relabel(tmp, name="deeplabv3plus_tiny")), unfinished=EVAL_DONE),
    Case("a model file without its name", _evaluate(), names="m.pt", setup=model_file(name=None),
         unfinished=EVAL_DONE),
    Case("a model file without its dataset", _evaluate(), names="m.pt", setup=model_file(dataset=None),
         unfinished=EVAL_DONE),
    Case("too few class names", _evaluate(), names="m.pt", setup=model_file(class_names=CITYSCAPES_CLASSES[:5]),
         unfinished=EVAL_DONE),
    Case("hierarchical fusion with a model without attention", _evaluate(setting="hierarchical:0.5,1"),
         names="m.pt", setup=model_file(attention=False), unfinished=EVAL_DONE),
    Case("a training checkpoint given as the model", _evaluate(model=LAST), names="last.pt", setup=_swapped_last,
         unfinished=EVAL_DONE),
    Case("autolabel with a training checkpoint", _autolabel(model=LAST), names="last.pt", setup=_swapped_last,
         unfinished=AL_DONE),
    Case("resume from a checkpoint of another class count", _train(), names="last.pt", setup=_swapped_last,
         unfinished=("{tmp}/run.pt",)),
    Case("resume from a corrupt last.pt (without --no-resume)", _train(), names="last.pt", setup=_corrupt_last,
         unfinished=("{tmp}/run.pt",)),
    Case("model.weights names no file", _train("model.name=deeplabv3plus_r50", "model.weights={tmp}/nonexistent.pt"),
         names="{tmp}/nonexistent.pt", unfinished=("{tmp}/run.pt", "{tmp}/run/checkpoints/last.pt")),
    Case("model.weights is not a weights file", _train("model.name=deeplabv3plus_r50", "model.weights={tmp}/trunk.pt"),
         names="{tmp}/trunk.pt", setup=_not_weights, unfinished=("{tmp}/run.pt", "{tmp}/run/checkpoints/last.pt")),
    Case("model.init names no file", _train("model.init={tmp}/nonexistent.pt"), names="{tmp}/nonexistent.pt",
         unfinished=("{tmp}/run.pt", "{tmp}/run/checkpoints/last.pt")),
    Case("model.init of another architecture", _train("model.init=" + M), names="m.pt", setup=_deeplab_init,
         unfinished=("{tmp}/run.pt", "{tmp}/run/checkpoints/last.pt")),
]


def _relabel(tmp: Path, **meta: Any) -> None:
    """Rewrite the meta of ``{tmp}/m.pt`` (a file whose label no longer matches its weights)."""
    state = torch.load(tmp / "m.pt", weights_only=True)
    state["meta"].update(meta)
    torch.save(state, tmp / "m.pt")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)


def test_the_model_file_says_what_it_is(data: Path, tmp_path: Path) -> None:
    """What ``hmsa train`` exports is accepted by every reader: a round trip through the checks."""
    from hmsa.training import checkpoint

    out = run(Case("train", _train(), names=""), tmp_path, data)
    assert out.code == 0, out.stderr
    _, meta = checkpoint.load_model_file(tmp_path / "run.pt")
    assert meta["dataset"] == "cityscapes" and meta["class_names"] == CITYSCAPES_CLASSES
    assert meta["name"] == "hrnet_ocr_tiny" and meta["attention"] is True
    assert meta["run_dir"] == str((tmp_path / "run").resolve()) and "stage" in meta
    evaluate = ["evaluate", "--config", str(TINY), "--model", "{tmp}/run.pt", "--out-dir", "{tmp}/eval",
                "--setting", "hierarchical:0.5,1", "data.root={data}/cityscapes"]
    out = run(Case("evaluate", evaluate, names=""), tmp_path, data)
    assert out.code == 0, out.stderr
    assert (tmp_path / "eval/metrics.json").is_file()


def test_no_resume_sets_a_corrupt_last_pt_aside(data: Path, tmp_path: Path) -> None:
    """The documented way to start over works even when ``last.pt`` cannot be read."""
    _corrupt_last(tmp_path)
    out = run(Case("no-resume", [*_train(), "--no-resume"], names=""), tmp_path, data)
    assert out.code == 0, out.stderr
    assert (tmp_path / "run.pt").is_file()
    aside = list((tmp_path / "run").glob("checkpoints.stale-*/last.pt"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"PK\x03\x04 truncated")
