"""Evaluation settings (``METHOD:SCALES[:flip]``), kept free of torch: the Snakefile checks the
pipeline config with them on every invocation, and importing torch would cost seconds each time."""

from __future__ import annotations

import math
from dataclasses import dataclass

from hmsa.errors import BadInputError

METHODS = ("single", "avgpool", "maxpool", "explicit", "hierarchical")


@dataclass(frozen=True)
class Setting:
    method: str
    scales: tuple[float, ...]
    flip: bool = False

    @property
    def name(self) -> str:
        scales = "-".join(f"{s:g}" for s in self.scales)
        return f"{self.method}_{scales}" + ("_flip" if self.flip else "")

    @property
    def spec(self) -> str:
        """The spelling of configs and ``--setting``: ``hierarchical:0.5,1,2:flip`` (``parse_setting``'s
        input; ``name`` is the file- and key-safe form)."""
        scales = ",".join(f"{s:g}" for s in self.scales)
        return f"{self.method}:{scales}" + (":flip" if self.flip else "")


def parse_setting(text: str) -> Setting:
    """``method:s1,s2,...[:flip]``, e.g. ``hierarchical:0.25,0.5,1,2:flip``."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or parts[0] not in METHODS or (len(parts) == 3 and parts[2] != "flip"):
        raise BadInputError(f"--setting {text!r}: expected METHOD:SCALES[:flip], METHOD one of {METHODS}")
    try:
        scales = tuple(sorted(float(s) for s in parts[1].split(",")))
    except ValueError as exc:
        raise BadInputError(f"--setting {text!r}: scales must be numbers like 0.5,1,2") from exc
    if 1.0 not in scales or not all(math.isfinite(s) and s > 0 for s in scales):
        raise BadInputError(f"--setting {text!r}: scales must be finite, positive and include 1.0")
    if len(set(scales)) != len(scales):  # avgpool:1,1,1,1 is a single-scale run under a 4-scale name
        raise BadInputError(f"--setting {text!r}: a scale is repeated")
    return Setting(parts[0], scales, len(parts) == 3)
