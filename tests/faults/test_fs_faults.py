"""File-system faults of issue #15: an output path that is a directory (found up front, not after the
whole training), a full disk, a read-only folder; and the hygiene of outputs: modes that follow the
umask, temp files of killed processes cleaned when a stage starts again in their folder.

A full disk and a read-only folder are real: a tiny tmpfs (skipped where mounting is not allowed),
plus an injected ENOSPC that needs no privilege."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hmsa.data.labels import CITYSCAPES_CLASSES
from tests.faults.cases import TINY, Case, check, run


def _train(*extra: str, run_dir: str = "{tmp}/run") -> list[str]:
    return ["train", "--config", str(TINY), "--run-dir", run_dir, "data.root={data}/cityscapes", *extra]


def _model(tmp: Path) -> None:
    from tests.test_evaluate import write_model

    write_model(tmp / "m.pt", 19, CITYSCAPES_CLASSES)


def _evaluate(out_dir: str = "{tmp}/eval") -> list[str]:
    return ["evaluate", "--config", str(TINY), "--model", "{tmp}/m.pt", "--out-dir", out_dir, "--setting", "single:1",
            "data.root={data}/cityscapes"]


def _autolabel(out_dir: str = "{tmp}/labels", manifest: str = "{tmp}/manifest.json") -> list[str]:
    return ["autolabel", "--config", str(TINY), "--model", "{tmp}/m.pt", "--out-dir", out_dir, "--manifest", manifest,
            "data.root={data}/cityscapes", "autolabel.scales=[1.0]", "autolabel.method=single"]


def _prepare(out: str = "{tmp}/prepared.json") -> list[str]:
    return ["data", "prepare", "--dataset", "cityscapes", "--root", "{data}/cityscapes", "--out", out]


def _dirs(*names: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        for n in names:
            (tmp / n).mkdir(parents=True)
    return setup


def _file(name: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        _model(tmp)
        (tmp / name).write_text("not a folder\n")
    return setup


NOTHING_TRAINED = ("{tmp}/run/checkpoints/last.pt", "{tmp}/run/config.yaml")
CASES = [
    Case("train: --out-model is a directory (found before training)", [*_train(), "--out-model", "{tmp}/out.pt"],
         names="{tmp}/out.pt", setup=_dirs("out.pt"), unfinished=NOTHING_TRAINED),
    Case("train: --out-metrics is a directory", [*_train(), "--out-metrics", "{tmp}/train.json"],
         names="{tmp}/train.json", setup=_dirs("train.json"), unfinished=NOTHING_TRAINED),
    Case("train: --run-dir is a file", _train(), names="{tmp}/run", setup=_file("run"),
         unfinished=("{tmp}/run.pt",)),
    Case("evaluate: --out-dir is a file", _evaluate(), names="{tmp}/eval", setup=_file("eval")),
    Case("evaluate: metrics.json is a directory", _evaluate(), names="{tmp}/eval/metrics.json",
         setup=lambda tmp: (_model(tmp), _dirs("eval/metrics.json")(tmp)), unfinished=("{tmp}/eval/per_class.csv",)),
    Case("autolabel: --manifest is a directory", _autolabel(), names="{tmp}/manifest.json",
         setup=lambda tmp: (_model(tmp), _dirs("manifest.json")(tmp)), unfinished=("{tmp}/labels/train_extra",)),
    Case("data prepare: --out is a directory", _prepare(), names="{tmp}/prepared.json", setup=_dirs("prepared.json")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (root only; the test is skipped where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


READ_ONLY = {
    "train": (_train(run_dir="{tmp}/ro/run"), "{tmp}/ro/run"),
    "evaluate": (_evaluate("{tmp}/ro/eval"), "{tmp}/ro/eval"),
    "autolabel": (_autolabel("{tmp}/ro/labels", "{tmp}/ro/manifest.json"), "{tmp}/ro: "),
    "data prepare": (_prepare("{tmp}/ro/prepared.json"), "{tmp}/ro: "),
}


@pytest.mark.parametrize("command", list(READ_ONLY))
def test_read_only_folder(command: str, data: Path, tmp_path: Path) -> None:
    """4 of 4 commands gave tracebacks: each is now one line naming the folder, found up front."""
    argv, names = READ_ONLY[command]
    _model(tmp_path)
    with tmpfs(tmp_path / "ro", "ro,size=64k"):
        case = Case(f"{command}: read-only output folder", argv, names=names)
        out = run(case, tmp_path, data)
        assert out.kind == "one-line", out.stderr
        assert names.replace("{tmp}", str(tmp_path)) in out.stderr and "Read-only file system" in out.stderr


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_disk_full_while_checkpointing(data: Path, tmp_path: Path) -> None:
    """``torch.save`` on a full disk: one line naming the checkpoint and the cause (was ``RuntimeError
    ... unexpected pos``); no checkpoint, no temp file left."""
    with tmpfs(tmp_path / "full", "size=48k") as full:
        out = run(Case("train", _train(run_dir=str(full / "run")), names=""), tmp_path, data)
        assert out.kind == "one-line", out.stderr
        assert f"{full}/run/" in out.stderr and "No space left on device" in out.stderr
        assert not (full / "run/checkpoints/last.pt").exists() and not _leftovers(full)


def test_disk_full_injected(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC from the writer of an evaluation output (no mount needed): one line naming the file, and
    neither it nor ``metrics.json`` nor a temp file is left."""
    real = Path.write_text

    def full(self: Path, *args: object, **kwargs: object) -> int:
        if self.name.startswith(".per_class.csv"):
            real(self, "half a ro")  # the disk fills during the write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full)
    case = Case("evaluate on a full disk", _evaluate(), names="{tmp}/eval/per_class.csv: No space left on device",
                setup=_model, unfinished=("{tmp}/eval/per_class.csv", "{tmp}/eval/metrics.json"))
    check(case, tmp_path, data)
    assert not _leftovers(tmp_path / "eval")


def test_outputs_follow_the_umask(data: Path, tmp_path: Path) -> None:
    """Results are for the group (were 0600 whatever the umask: ``mkstemp`` + rename)."""
    from hmsa.io import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
        os.umask(0o002)
        out = run(Case("train", [*_train("train.iterations=1"), "--out-model", "{tmp}/run.pt"], names=""),
                  tmp_path, data)
        assert out.code == 0, out.stderr
        from hmsa.tracking import buffer as wal  # the MLflow write-ahead log's bookkeeping too

        wal._write_run_id(tmp_path / "wal/r.jsonl", "r")
        wal._write_offset(tmp_path / "wal/r.jsonl", 0)
    finally:
        os.umask(old)
    for f in (tmp_path / "wal/r.run", tmp_path / "wal/r.sent"):
        assert f.stat().st_mode & 0o777 == 0o664, f
    for f in (tmp_path / "run.pt", tmp_path / "run/checkpoints/last.pt", tmp_path / "run/config.yaml"):
        assert f.stat().st_mode & 0o777 == 0o664, f


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_killed_writers_are_cleaned_when_a_stage_starts(data: Path, tmp_path: Path) -> None:
    """Left by kills: cleaned by the next start of a stage in that folder. A live writer's temp file
    (this process's) and a fresh zero-byte one of unknown origin are left alone."""
    host = socket.gethostname()
    ckpt = tmp_path / "run/checkpoints"
    ckpt.mkdir(parents=True)
    killed = ckpt / f".last.pt~{_dead_pid()}@{host}~0badc0de.tmp"
    killed.write_bytes(b"half a checkpoint")
    old_style = tmp_path / ".run.pt.k3x9q_ab.tmp"  # mkstemp's naming before pid@host
    old_style.touch()
    os.utime(old_style, (time.time() - 3600, time.time() - 3600))
    live = ckpt / f".last.pt~{os.getpid()}@{host}~0123abcd.tmp"
    live.touch()
    fresh = tmp_path / ".other.json.abcdefgh.tmp"
    fresh.touch()
    # a run that stops right after starting (a missing init file) still cleans its folders first
    out = run(Case("train", [*_train("model.init={tmp}/nowhere.pt"), "--out-model", "{tmp}/run.pt"], names=""),
              tmp_path, data)
    assert out.code == 2, out.stderr
    assert not killed.exists() and not old_style.exists()
    assert live.exists() and fresh.exists()
