"""One process at a time in a run dir, on one host or across the hosts of a shared file system.

``flock`` alone would not do: on NFS it is either host-local or emulated, and a run dir is shared by
the nodes of a cluster. The lock is a file, ``<run dir>/.lock``, made the way that is atomic on NFS
too: written in full under a unique name, then hard-linked to its final name (``link`` fails if the
name exists), so a reader never sees a half-written lock. It holds who made it: host, pid, the pid's
start time and boot (a recycled pid is not its holder), and the SLURM job. A lock is taken over
(stale) only when that is provably safe:

- same host, and its process is gone (kill -9, an OOM kill): the resume after a kill just works;
- the same SLURM job, restarted (SLURM keeps the job id across a requeue, the old processes are gone).

Otherwise the second process gets one line naming the holder, and on another host the file to remove
if that host is known to be down. A take-over happens under a ``flock`` (``.lock.takeover``) so two processes
that both find the same stale lock do not both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

from hmsa.errors import HmsaError
from hmsa.io import flock, naming, pid_running

LOCK = ".lock"


class RunDirBusy(HmsaError):
    """Another process holds the run dir (an expected failure: the CLI's one-line error path)."""


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or ""."""
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[19]
    return ""


def _me() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_ticks(os.getpid()),
            "boot": _boot_id(), "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
            "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read(path: Path) -> dict[str, Any] | None:
    """The holder recorded in the lock file; None when there is none (released meanwhile)."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: written by something else; never taken over automatically
    return holder if isinstance(holder, dict) else {}


def _stale(holder: dict[str, Any]) -> bool:
    me = _me()
    if (holder.get("slurm_job") and holder.get("slurm_job") == me["slurm_job"]
            and str(holder.get("slurm_restart")) != me["slurm_restart"]):
        return True  # the same SLURM job after a requeue: its earlier processes are gone
    if not holder or holder.get("host") != me["host"]:
        return False  # another host's process cannot be checked from here
    if holder.get("boot") and holder.get("boot") != me["boot"]:
        return True  # made before this host rebooted
    pid = int(holder.get("pid") or 0)
    if not pid_running(pid):
        return True
    return bool(holder.get("start")) and holder.get("start") != _start_ticks(pid)  # pid recycled


def _describe(path: Path, holder: dict[str, Any]) -> str:
    if not holder:
        return f"{path}: run dir locked by an unreadable lock file; remove it if no hmsa process uses this run dir"
    who = f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}"
    if holder.get("slurm_job"):
        who += f", SLURM job {holder['slurm_job']}"
    here = holder.get("host") == socket.gethostname()
    hint = "" if here else f"; if that host is down, remove {path}"
    return f"{path.parent}: run dir in use by another hmsa process ({who}){hint}"


def _try_link(path: Path, content: str) -> bool:
    """Create ``path`` with ``content`` atomically, only if it does not exist (NFS-safe: a hard link)."""
    tmp = path.parent / f".lock~{os.getpid()}@{socket.gethostname()}~{secrets.token_hex(4)}.tmp"
    with naming(path, instead_of=tmp):
        tmp.write_text(content)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:
        # NFS may report a failure for a link that was made (the reply was lost): the link count says
        return tmp.stat().st_nlink == 2
    finally:
        tmp.unlink(missing_ok=True)


def acquire(run_dir: Path) -> dict[str, Any]:
    """Take the run dir's lock or raise ``RunDirBusy`` naming the holder; returns what was written."""
    run_dir = Path(run_dir)
    with naming(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    mine = _me()
    for _ in range(3):
        if _try_link(path, json.dumps(mine)):
            return mine
        holder = _read(path)
        if holder is None:
            continue  # released between our attempt and the read: try again
        if not _stale(holder):
            raise RunDirBusy(_describe(path, holder))
        # Remove the stale lock only if it is still the one judged stale: another process may have
        # taken it over (and made its own) meanwhile.
        with flock(run_dir / f"{LOCK}.takeover"):
            if _read(path) == holder:
                path.unlink(missing_ok=True)
    raise RunDirBusy(_describe(path, _read(path) or {}))


def release(run_dir: Path, mine: dict[str, Any]) -> None:
    """Remove the lock if it is still ours (never another process's)."""
    path = Path(run_dir) / LOCK
    if _read(path) == mine:
        path.unlink(missing_ok=True)
