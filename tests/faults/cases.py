"""The table-driven form of issue #15's hostile cases: one `Case` per thing a user (or an unlucky
cluster) does wrong, run through ``hmsa.cli.main`` in this process (fast, and a traceback is caught
and classified rather than lost). Every test file under ``tests/faults/`` defines ``CASES`` for its
area; ``benchmarks/bad_input.py`` runs them all and counts the outcomes, the figures of the issue.

The contract each case checks: a non-zero exit, exactly one line on stderr, naming the file or config
key (``names``), and none of the ``unfinished`` paths left behind looking complete."""

from __future__ import annotations

import contextlib
import io
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "experiments" / "tiny.yaml"

# Outcome kinds, worst first: what the runner counts.
ACCEPTED, TRACEBACK, UNCLEAR, ONE_LINE = "silently accepted", "traceback", "unclear", "one-line"


@dataclass(frozen=True)
class Case:
    """``argv`` and ``names`` may hold ``{tmp}`` (the case's scratch dir) and ``{data}`` (a private
    copy of the embedded test data, made only when a case uses it)."""

    name: str
    argv: Sequence[str]
    names: str
    setup: Callable[[Path], None] | None = None  # called with the scratch dir before the command
    unfinished: tuple[str, ...] = ()  # paths (with {tmp}) that must not exist afterwards
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Outcome:
    code: int
    stderr: str

    @property
    def kind(self) -> str:
        lines = self.stderr.strip().splitlines()
        if self.code == 0:
            return ACCEPTED
        if "Traceback (most recent call last)" in self.stderr:
            return TRACEBACK
        return ONE_LINE if len(lines) == 1 else UNCLEAR


def expand(text: str, tmp: Path, data: Path | None = None) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{data}", str(data or tmp / "data"))


def run(case: Case, tmp: Path, data: Path | None = None) -> Outcome:
    """Run one case in this process, in ``tmp`` (what a command writes beside itself lands there);
    stdout is discarded, stderr captured, any exception a traceback."""
    import os

    from hmsa.cli import main

    if case.setup is not None:
        case.setup(tmp)
    argv = [expand(a, tmp, data) for a in case.argv]
    err = io.StringIO()
    saved = {k: os.environ.get(k) for k in case.env}
    os.environ.update({k: expand(v, tmp, data) for k, v in case.env.items()})
    try:
        with contextlib.chdir(tmp), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - classified, not hidden: the text is kept
                err.write(traceback.format_exc())
                code = 1
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Outcome(code, err.getvalue())


def left_behind(case: Case, tmp: Path, data: Path | None = None) -> list[Path]:
    """The ``unfinished`` paths that exist after the command."""
    return [p for p in (Path(expand(u, tmp, data)) for u in case.unfinished) if p.exists()]


def classify(case: Case, out: Outcome, tmp: Path, data: Path | None = None) -> str:
    """What the runner counts: a one-line error that does not name the file or key is ``unclear``,
    and so is one that leaves an output looking finished."""
    kind = out.kind
    if kind == ONE_LINE and (expand(case.names, tmp, data) not in out.stderr or left_behind(case, tmp, data)):
        return UNCLEAR
    return kind


def check(case: Case, tmp: Path, data: Path | None = None) -> None:
    """Assert the contract for one case (the body of every parametrised fault test)."""
    out = run(case, tmp, data)
    assert out.kind == ONE_LINE, f"{case.name}: {out.kind} (exit {out.code}):\n{out.stderr}"
    names = expand(case.names, tmp, data)
    assert names in out.stderr, f"{case.name}: the error does not name {names!r}: {out.stderr.strip()}"
    left = left_behind(case, tmp, data)
    assert not left, f"{case.name}: left behind {left}"
