"""DVC versions of what the DAG makes: datasets, auto-labels, final models and their metrics files.

Snakemake owns the DAG; DVC only records versions (no DVC stages: ``dvc repro`` would delete
Snakemake's outputs). ``results/``, ``runs/`` and ``data/embedded/`` are git-ignored, and a ``.dvc``
file beside its output would never be committed, so the ``.dvc`` files live under ``versions/``,
mirroring the outputs' paths (``versions/results/<stage>/model.pt.dvc``), each with a ``wdir`` back
to the repository root. ``dvc pull`` / ``dvc push`` / ``dvc status`` work on them as usual.

A restored file gets the time of the pull as its mtime, in whatever order DVC checks files out, and
Snakemake (no ``.snakemake`` metadata on a fresh clone) decides staleness by mtimes alone. So every
``.dvc`` file records when its output was made, and :func:`pull` re-stamps restored outputs in that
order, all newer than the checkout: the DAG then skips the stages that made them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from hmsa.errors import HmsaError
from hmsa.io import atomic_write_text, file_lock

log = logging.getLogger("hmsa.versioning")  # by role, as the other loggers (not __name__)

VERSIONS_DIR = "versions"
META_KEY = "hmsa_made_ns"  # max mtime (ns) of the output's files when it was recorded
MODES = ("off", "record", "push")
_LOCK_RETRIES = 60  # DVC's own lock (another `dvc` command, a user's `dvc status`): wait, never fail
_LOCK_SLEEP_S = 2.0


class VersioningError(HmsaError, RuntimeError):
    pass



def dvc_root(start: Path | None = None) -> Path | None:
    """The nearest ancestor holding a ``.dvc/`` directory, or None."""
    here = Path(start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / ".dvc").is_dir():
            return d
    return None


def _git_root(path: Path) -> Path | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()).resolve() if out.returncode == 0 else None


def versioned_root(start: Path | None = None) -> tuple[Path | None, str]:
    """The repository root when ``start`` is inside a git + DVC checkout, else (None, why not)."""
    root = dvc_root(start)
    if root is None:
        return None, "no .dvc/ directory here or above (not a DVC repository)"
    if _git_root(root) is None:
        return None, f"{root} is not a git checkout (.dvc files could not be committed)"
    return root, ""


def _abs(path: Path) -> Path:
    """Absolute, with symlinks resolved in the parents only: a dataset root may be a symlink to
    shared storage, and DVC records it under its name in the repository."""
    path = Path(path).absolute()
    return path.parent.resolve() / path.name


def dvcfile_for(root: Path, path: Path) -> Path:
    """Where the ``.dvc`` file of ``path`` (inside ``root``) lives."""
    rel = _abs(path).relative_to(root)
    return root / VERSIONS_DIR / f"{rel.as_posix()}.dvc"


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [Path(d) / f for d, _, names in os.walk(path) for f in names]


def _made_ns(path: Path) -> int:
    return max((f.stat().st_mtime_ns for f in _files(path)), default=0)


def _dvc(root: Path, *args: str) -> str:
    """Run one ``dvc`` command in ``root``; retry while another DVC process holds the repo lock."""
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", *args]
    for attempt in range(_LOCK_RETRIES):
        out = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout
        if "Unable to acquire lock" not in out.stderr + out.stdout:
            lines = [ln for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
            raise VersioningError(f"dvc {args[0]} failed in {root}: {lines[-1] if lines else out.returncode}")
        log.info("DVC repository locked by another process, retrying (%d)", attempt + 1)
        time.sleep(_LOCK_SLEEP_S)
    raise VersioningError(f"dvc {args[0]}: repository {root} still locked after {_LOCK_RETRIES} tries")


def default_remote(root: Path) -> str:
    """The DVC default remote's name, or "" when none is configured."""
    out = subprocess.run([sys.executable, "-m", "dvc", "remote", "default"], cwd=root, capture_output=True,
                         text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def _write_stub(root: Path, path: Path, dvcfile: Path) -> None:
    """A ``.dvc`` file without hashes: ``dvc commit`` fills them in (so it never looks complete early)."""
    stub = {"wdir": os.path.relpath(root, dvcfile.parent),
            "meta": {META_KEY: _made_ns(path)},
            "outs": [{"path": _abs(path).relative_to(root).as_posix()}]}
    atomic_write_text(dvcfile, yaml.safe_dump(stub, sort_keys=False))


def record(paths: list[Path], push: bool = True) -> list[Path]:
    """Record ``paths`` (files or directories) with DVC; push them when a default remote exists.

    Returns the ``.dvc`` files written; [] (with a log line) outside a git + DVC checkout."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"{p}: not found, nothing to version")
    root, why = versioned_root()
    if root is None:
        log.info("outputs not versioned: %s", why)
        return []
    todo = []
    for p in paths:
        if not _abs(p).is_relative_to(root):
            log.warning("%s is outside the DVC repository %s: not versioned", p, root)
            continue
        todo.append(p)
    written = []
    with file_lock("dvc"):
        for p in todo:
            dvcfile = dvcfile_for(root, p)
            _write_stub(root, p, dvcfile)
            written.append(dvcfile)
        if written:
            # One `dvc commit` for all (each DVC start costs about a second). --no-relink: the
            # workspace files stay exactly as the stage wrote them (same mtime).
            _dvc(root, "commit", "--force", "--no-relink", "--quiet", *map(str, written))
        for p, dvcfile in zip(todo, written, strict=True):
            log.info("versioned %s (%s) in %s", p, data_version(p), dvcfile.relative_to(root))
        if push and written:
            remote = default_remote(root)
            if remote:
                _dvc(root, "push", "--quiet", *map(str, written))
                log.info("pushed %d output(s) to DVC remote %r", len(written), remote)
            else:
                log.info("no DVC default remote configured: not pushing (dvc remote add -d NAME URL)")
    return written


def _read(dvcfile: Path) -> dict:
    try:
        return yaml.safe_load(dvcfile.read_text()) or {}
    except yaml.YAMLError as exc:
        raise VersioningError(f"{dvcfile}: not a valid .dvc file ({exc.__class__.__name__})") from exc


def data_version(path: Path) -> str:
    """The DVC md5 recorded for ``path`` (``<md5>.dir`` for a directory); "" when it is not tracked."""
    path = Path(path)
    root = dvc_root(path.parent if not path.exists() else path)
    if root is None or not _abs(path).is_relative_to(root):
        return ""
    for dvcfile in (dvcfile_for(root, path), _abs(path).with_name(path.name + ".dvc")):
        if dvcfile.is_file():
            outs = _read(dvcfile).get("outs") or [{}]
            return str(outs[0].get("md5", ""))
    return ""


def dataset_version(root: Path) -> str | None:
    """The DVC version of a dataset: the md5 recorded for ``root`` or, when ``root`` lies inside a
    versioned folder (the embedded ``data/embedded``), that folder's ``<md5>.dir``. None when nothing
    records it, or when its files no longer match the record (count or total size differ): a stale
    hash would be a wrong provenance, so the caller says "unversioned" instead.

    Cheap enough for every stage (one ``stat`` per file, no hashing)."""
    path = _abs(Path(root))
    top = dvc_root(path if path.exists() else path.parent)
    if top is None or not path.is_relative_to(top):
        return None
    for candidate in (path, *path.parents):
        if not candidate.is_relative_to(top) or candidate == top:
            break
        dvcfile = dvcfile_for(top, candidate)
        if dvcfile.is_file():
            out = (_read(dvcfile).get("outs") or [{}])[0]
            md5 = str(out.get("md5", ""))
            return md5 if md5 and _matches(candidate, out) else None
    return None


def _matches(path: Path, out: dict) -> bool:
    """Whether ``path`` still has the file count and total size its ``.dvc`` record says."""
    if not path.exists():
        return False
    files = _files(path)
    size = sum(f.stat().st_size for f in files)
    if "size" in out and int(out["size"]) != size:
        return False
    return not (path.is_dir() and "nfiles" in out and int(out["nfiles"]) != len(files))


def tracked(root: Path) -> list[Path]:
    """Every ``.dvc`` file under ``versions/``."""
    return sorted((root / VERSIONS_DIR).rglob("*.dvc"))


def _output(root: Path, dvcfile: Path) -> Path:
    spec = _read(dvcfile)
    wdir = (dvcfile.parent / spec.get("wdir", ".")).resolve()
    return wdir / spec["outs"][0]["path"]


def _signature(path: Path) -> frozenset:
    if not path.exists():
        return frozenset()
    return frozenset((str(f), st.st_mtime_ns, st.st_size, st.st_ino) for f in _files(path) for st in [f.stat()])


def restamp(outputs: list[tuple[int, Path]], step_ns: int = 1_000_000) -> None:
    """Give ``outputs`` (made_ns, path) increasing mtimes from now on, in the order they were made."""
    base = time.time_ns()
    for i, (_, out) in enumerate(sorted(outputs, key=lambda t: t[0])):
        ns = base + i * step_ns
        for f in _files(out):
            os.utime(f, ns=(ns, ns))


def pull(paths: list[Path] | None = None) -> list[Path]:
    """``dvc pull`` the tracked outputs (all, or those of ``paths``) and re-stamp what it restored.

    Returns the restored outputs."""
    root, why = versioned_root()
    if root is None:
        raise VersioningError(f"cannot pull: {why}")
    dvcfiles = [dvcfile_for(root, Path(p)) for p in paths] if paths else tracked(root)
    missing = [f for f in dvcfiles if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such .dvc file (that output is not versioned)")
    if not dvcfiles:
        log.info("nothing versioned under %s", root / VERSIONS_DIR)
        return []
    outs = {f: _output(root, f) for f in dvcfiles}
    before = {f: _signature(o) for f, o in outs.items()}
    with file_lock("dvc"):
        _dvc(root, "pull", "--quiet", *map(str, dvcfiles))
    restored = [(int((_read(f).get("meta") or {}).get(META_KEY, 0)), o)
                for f, o in outs.items() if _signature(o) != before[f]]
    restamp(restored)
    for _, o in restored:
        log.info("restored %s", o.relative_to(root))
    return [o for _, o in restored]
