"""Auto-labelling sharded across independent jobs (a SLURM array or --shard i/n): each shard writes
only its images, and the manifest appears when the last shard is done, equal to a single run's —
including the label quality measured against the truth of the coarse images (--truth)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_evaluate import write_model

from hmsa.autolabel import resolve_shard
from hmsa.cli import main
from hmsa.data.labels import CITYSCAPES_CLASSES, cityscapes_label_to_train_lut

ROOT = Path(__file__).resolve().parents[1]


def _autolabel(data: Path, model: Path, out: Path, manifest: Path, *extra: str) -> int:
    return main(["autolabel", "--config", str(ROOT / "configs/experiments/tiny.yaml"), "--model", str(model),
                 "--out-dir", str(out), "--manifest", str(manifest), f"data.root={data / 'cityscapes'}",
                 "autolabel.scales=[0.5,1.0]", "autolabel.threshold=0.1", *extra])


def _pngs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_two_shards_one_after_the_other_equal_one_run(embedded_data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMSA_TRACKING", "0")
    model = write_model(tmp_path / "teacher.pt", 19, CITYSCAPES_CLASSES, bias=CITYSCAPES_CLASSES.index("sky"))
    truth = ("--truth", str(embedded_data / "truth/cityscapes"))
    assert _autolabel(embedded_data, model, tmp_path / "one", tmp_path / "one.json", *truth) == 0
    single = json.loads((tmp_path / "one.json").read_text())
    assert single["images"] == 3 and single["quality"]["truth"] == truth[1]

    sharded, manifest = tmp_path / "sharded", tmp_path / "sharded.json"
    assert _autolabel(embedded_data, model, sharded, manifest, "--shard", "0/2", *truth) == 0
    assert len(_pngs(sharded)) == 2 and not manifest.exists()  # images 0 and 2 only; not complete yet
    # the second shard comes from a SLURM array whose ids start at 1 (--array=1-2)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert _autolabel(embedded_data, model, sharded, manifest, *truth) == 0
    merged = json.loads(manifest.read_text())
    assert merged.pop("labels_dir") == str(sharded) and single.pop("labels_dir") == str(tmp_path / "one")
    assert merged == single  # quality included: the parts' joint counts add up exactly
    assert _pngs(sharded) == _pngs(tmp_path / "one")
    _check_quality(single["quality"], embedded_data, tmp_path / "one")


def _check_quality(quality: dict, data: Path, labels: Path) -> None:
    """The manifest's numbers, recomputed from the files: truth, gtCoarse and the auto-labels."""
    lut = cityscapes_label_to_train_lut()
    stats = {"coarse": [0, 0, 0], "autolabel": [0, 0, 0]}  # labelled, judged, correct
    pixels = 0
    for auto_file in sorted((labels / "train_extra").rglob("*.png")):
        rel = auto_file.relative_to(labels / "train_extra")
        stem = str(rel)[: -len("_gtCoarse_labelIds.png")]
        true = lut[np.asarray(Image.open(data / f"truth/cityscapes/train_extra/{stem}_gtFine_labelIds.png"))]
        coarse = lut[np.asarray(Image.open(data / "cityscapes/gtCoarse/train_extra" / rel))]
        pixels += true.size
        for source, lab in (("coarse", coarse), ("autolabel", np.asarray(Image.open(auto_file)))):
            judged = (lab != 255) & (true != 255)
            stats[source] = [a + b for a, b in zip(stats[source], [(lab != 255).sum(), judged.sum(),
                                                                   (judged & (lab == true)).sum()], strict=True)]
    assert quality["pixels"] == pixels
    for source, (labelled, judged, correct) in stats.items():
        q = quality["sources"][source]
        assert q["labelled"] == labelled and q["coverage"] == pytest.approx(labelled / pixels)
        assert q["accuracy"] == pytest.approx(correct / judged)
    assert quality["sources"]["coarse"]["accuracy"] > 0.95  # polygons inside objects: nearly always right
    assert quality["sources"]["coarse"]["coverage"] < 0.7  # ... with wide unlabelled borders
    assert quality["sources"]["coarse"]["per_class"]["pole"]["labelled"] == 0


def test_shard_resolution() -> None:
    assert resolve_shard(None, {}) == (0, 1)
    assert resolve_shard("1/4", {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2"}) == (1, 4)
    assert resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    for bad in ("4/4", "x/2", "1"):
        with pytest.raises(ValueError, match="--shard"):
            resolve_shard(bad, {})


def test_labels_of_another_teacher_or_threshold_are_made_again(embedded_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming skips finished images, but only those made by the same teacher weights and settings:
    a retrained teacher keeps its path, and a changed threshold must change the labels."""
    monkeypatch.setenv("HMSA_TRACKING", "0")
    model = write_model(tmp_path / "teacher.pt", 19, CITYSCAPES_CLASSES, bias=CITYSCAPES_CLASSES.index("sky"))
    out = tmp_path / "labels"
    assert _autolabel(embedded_data, model, out, tmp_path / "m.json") == 0
    first = _pngs(out)
    assert _autolabel(embedded_data, model, out, tmp_path / "m.json") == 0
    assert _pngs(out) == first  # same teacher and settings: reused as they are
    assert _autolabel(embedded_data, model, out, tmp_path / "m.json", "autolabel.threshold=0.999") == 0
    assert _autolabel(embedded_data, model, tmp_path / "fresh", tmp_path / "f.json",
                      "autolabel.threshold=0.999") == 0
    assert _pngs(out) == _pngs(tmp_path / "fresh") != first  # relabelled, as a fresh run would
    write_model(model, 19, CITYSCAPES_CLASSES, bias=CITYSCAPES_CLASSES.index("road"))  # retrained, same path
    assert _autolabel(embedded_data, model, out, tmp_path / "m.json") == 0
    assert _autolabel(embedded_data, model, tmp_path / "fresh2", tmp_path / "f2.json") == 0
    assert _pngs(out) == _pngs(tmp_path / "fresh2") != first


def test_missing_truth_is_one_line(embedded_data: Path, tmp_path: Path) -> None:
    from hmsa.autolabel import _quality_counts

    name = "augsburg/augsburg_000000_000019"
    label = np.full((64, 128), 255, np.uint8)
    counts = _quality_counts(embedded_data / "cityscapes", embedded_data / "truth/cityscapes", "train_extra",
                             name, label, 19)
    assert counts.sum() == label.size and counts[:, :, :19].sum() == 0  # nothing auto-labelled
    with pytest.raises(FileNotFoundError, match=r"_gtFine_labelIds\.png: label not found$"):
        _quality_counts(embedded_data / "cityscapes", tmp_path, "train_extra", name, label, 19)
