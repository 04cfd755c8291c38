"""Headless Chromium for the browser tests (the MLflow compare view, the report page).

Debian's ``chromium`` is installed on first use when missing, as tests/slurm/cluster.sh installs SLURM:
as root with apt-get. Where it cannot be (not root, no apt-get) the tests skip with that reason; with
``HMSA_REQUIRE_BROWSER=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGES = ("chromium",)
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
          "--no-first-run", "--disable-extensions")


def _install() -> str | None:
    """Path of the chromium binary, installing Debian's package if needed; None if impossible."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env,
                   capture_output=True)
    return shutil.which("chromium")


def chromium() -> str:
    """The chromium binary, or skip (fail under HMSA_REQUIRE_BROWSER=1) where it cannot be installed."""
    path = _install()
    if path is None:
        reason = f"chromium is not installed and cannot be installed here (needs root and apt-get): {PACKAGES}"
        if os.environ.get("HMSA_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def dump_dom(url: str, wait_ms: int = 8000, timeout: float = 120) -> str:
    """The DOM after the page's scripts ran for up to ``wait_ms`` (``--virtual-time-budget``)."""
    out = subprocess.run([chromium(), *_FLAGS, f"--virtual-time-budget={wait_ms}", "--dump-dom", url],
                         capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"chromium --dump-dom {url} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def screenshot(url: str, path: Path, size: tuple[int, int] = (1400, 1000), wait_ms: int = 8000,
               timeout: float = 120) -> Path:
    """A PNG of the rendered page (to look at with an image viewer)."""
    out = subprocess.run([chromium(), *_FLAGS, f"--virtual-time-budget={wait_ms}", f"--window-size={size[0]},{size[1]}",
                          f"--screenshot={path}", url], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0 or not path.exists():
        raise RuntimeError(f"chromium --screenshot {url} failed ({out.returncode}): {out.stderr[-2000:]}")
    return path
