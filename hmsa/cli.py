"""``hmsa`` — the one entry point. Snakemake rules (and DVC) call only this.

Every path comes in as an argument; bad input ends with one line naming the file or key (exit 2).
The parser (commands, options, their help) is in hmsa/cli_args.py; the handlers are in
hmsa/commands.py, which a stage's job also runs. ``submit``, which starts those jobs, is handled here.
"""

from __future__ import annotations

import argparse
import sys

from hmsa.commands import HANDLERS, run
from hmsa.config import ConfigError
from hmsa.errors import BadInputError


def _cmd_submit(a: argparse.Namespace) -> int:
    from hmsa.orchestration.launch import submit

    argv = list(a.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("submit: give the hmsa command to run after '--'")
    tags = {}
    for t in a.tag:
        key, eq, value = t.partition("=")
        if not eq or not key.strip():
            raise BadInputError(f"--tag {t!r}: expected KEY=VALUE")
        tags[key.strip()] = value
    return submit(a.stage, a.kind, a.run_dir, a.cluster, argv, tags, expect=a.expect)


def main(argv: list[str] | None = None) -> int:
    return run(argv, {**HANDLERS, "submit": _cmd_submit})


if __name__ == "__main__":
    sys.exit(main())
