"""The import contracts of pyproject.toml hold: layers between and inside the packages, no circles.

``lint-imports`` reads the contracts from pyproject.toml and the imports from the
source (also those inside functions), so a module that imports upwards or a
circle between two folders of ``core`` fails here, not only in scripts/test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def test_every_import_contract_is_kept():
    run = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]
    for contract in (
        "layers inside core: tasks -> shared machinery -> ground floor KEPT",
        "no circles inside core (at any depth) KEPT",
    ):
        assert contract in run.stdout
