"""An example of the table form (kept as the smallest real case: a config key that does not exist)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.cases import TINY, Case, check

CASES = [
    Case("a config override that names no key",
         ["train", "--config", str(TINY), "--run-dir", "{tmp}/run", "train.no_such_key=1"],
         names="train.no_such_key", unfinished=("{tmp}/run/model.pt",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case: Case, data: Path, tmp_path: Path) -> None:
    check(case, tmp_path, data)
