"""The examples in examples/ run as a user would run them, and say what they claim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_library_example_runs_and_reports_the_divergence_it_builds_up_to() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "library.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    out = result.stdout
    assert "rejected at ingestion: currency:" in out
    assert "ALERT DECISION_MISMATCH: tx-example-21" in out
    assert "twin of cust-ada: 21 payments" in out
