"""Files that are either complete or absent: atomic writes (temp file + fsync + rename, readable as
the umask says), the clean-up of temp files left by killed processes, up-front checks of output paths,
and the one lock helper (``flock``) every part of hmsa uses to take turns on this host."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hmsa.errors import BadInputError

# Temp files are named ``.<target>~<pid>@<host>~<random>.tmp``: whoever finds one later can tell
# whether the process that made it is still running (and so whether it is garbage).
_TMP = re.compile(r"^\..+~(?P<pid>\d+)@(?P<host>[^~/]+)~[0-9a-f]+\.tmp$")
# A zero-byte temp file of unknown origin (another host, an older naming) is garbage after this long:
# an atomic write fills its temp file within moments of creating it.
_ORPHAN_AGE_S = 60.0


def umask() -> int:
    """The process umask, read without changing it (``os.umask`` alone must set one to read one)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    old = os.umask(0o022)  # no /proc: set-and-restore (not thread-safe, hence the fallback only)
    os.umask(old)
    return old


@contextlib.contextmanager
def naming(path: Path, instead_of: Path | None = None) -> Iterator[None]:
    """Re-raise an ``OSError`` that names no file (``write`` on a full disk), or names the temp file
    ``instead_of``, as one naming ``path``: the CLI's one line says which output failed and why."""
    try:
        yield
    except OSError as exc:
        if exc.errno is not None and exc.filename in (None, None if instead_of is None else str(instead_of)):
            raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
        raise


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it, then rename over ``path``.

    On any failure (a full disk included) the temp file is removed and ``path`` keeps its old content.
    The file gets the mode a plain ``open`` would give (0666 less the umask), not ``mkstemp``'s 0600:
    results on a shared cluster are for the whole group."""
    path = Path(path)
    with naming(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}~{os.getpid()}@{socket.gethostname()}~{secrets.token_hex(4)}.tmp"
    try:
        with naming(path, instead_of=tmp):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the kernel applies the umask
            os.close(fd)
            write(tmp)
            os.chmod(tmp, 0o666 & ~umask())  # a writer that re-created the file may have set its own mode
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file with a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        what = f"{exc.msg} at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else "not text"
        raise BadInputError(f"{path}: not valid JSON ({what})") from exc


def brief(exc: BaseException, limit: int = 160) -> str:
    """``Type: first sentence`` of an exception from a library (torch, timm) whose messages run over
    several lines of advice: enough for the one-line error, which also names the file."""
    text = " ".join(str(exc).split())
    first = text.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {first[:limit]}" if first else type(exc).__name__


def pid_running(pid: int) -> bool:
    """Whether a process with this id exists on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    return True


def clean_tmp(directory: Path, recursive: bool = False) -> list[Path]:
    """Remove the temp files of atomic writes that will never finish: those of a process of this host
    that is gone (a kill), and zero-byte ones older than a minute whose maker cannot be checked.
    Called when a stage starts in ``directory``; a live writer's temp file is never touched."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    host, removed = socket.gethostname(), []
    for f in directory.rglob(".*.tmp") if recursive else directory.glob(".*.tmp"):
        m = _TMP.match(f.name)
        try:
            st = f.lstat()
            if m and m["host"] == host:
                dead = not pid_running(int(m["pid"]))
            else:
                dead = st.st_size == 0 and time.time() - st.st_mtime > _ORPHAN_AGE_S
            if dead and f.is_file():
                f.unlink()
                removed.append(f)
        except FileNotFoundError:  # removed meanwhile by someone else
            continue
    return removed


def remove_dead_builds(parent: Path, prefix: str) -> list[Path]:
    """Remove the folders ``<parent>/<prefix><pid>`` (a build renamed into place when done) whose
    process is gone: what a kill during the build left."""
    import shutil

    removed = []
    for d in Path(parent).glob(f"{prefix}*"):
        pid = d.name[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_running(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def check_output(path: Path, what: str) -> Path:
    """Fail up front (before hours of work) when an output file cannot be written: the path is a
    directory, or its folder cannot be made or written. Writes and removes a probe file, since
    permission bits say nothing for root or on a read-only mount."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} is a directory, expected a file path", str(path))
    check_writable_dir(path.parent)
    return path


def check_writable_dir(directory: Path) -> Path:
    """Create ``directory`` if needed and prove it writable (a probe file, removed again)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
    with naming(directory):
        directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".probe~{os.getpid()}@{socket.gethostname()}~{secrets.token_hex(4)}.tmp"
    with naming(directory, instead_of=probe):
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    probe.unlink(missing_ok=True)
    return directory


@contextlib.contextmanager
def flock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block: processes of this
    host take turns. The kernel drops it when the holder dies, so it never goes stale."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def file_lock(name: str) -> contextlib.AbstractContextManager[None]:
    """The named lock shared by every ``hmsa`` process on this host (``HMSA_LOCK_DIR``, default
    ``.hmsa/locks``): serialises MLflow run creation, submissions of one stage, and DVC commands."""
    return flock(Path(os.environ.get("HMSA_LOCK_DIR", ".hmsa/locks")) / f"{name}.lock")


def file_sha256(path: Path) -> str:
    """The file's content hash, read in 1 MiB blocks (model files can be hundreds of MB)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
