"""The one base of every *expected* failure: bad input, a missing file, an unreachable scheduler.

``hmsa`` prints such an error as ONE line, ``hmsa <cmd>: error: <message>`` (exit 2); the message
names the file or the config key. Anything else (a ``KeyError`` or ``ValueError`` from deep inside)
is a bug and keeps its traceback, so it is reported instead of hidden behind a vague one-liner."""

from __future__ import annotations


class HmsaError(Exception):
    """An expected failure whose message names the file or key at fault (one line)."""


class BadInputError(HmsaError, ValueError):
    """A command-line value, option, input file or environment variable is wrong (named in the message)."""


def one_line(message: str) -> str:
    """Library messages (YAML, PIL, MLflow) may span lines; the CLI promises one."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


class UnknownNameError(BadInputError, KeyError):
    """A name given by the user (model, dataset) is not in its registry; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
