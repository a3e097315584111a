"""bench/soak.py stays runnable: a short soak (2,000 requests) under both backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).parents[2] / "bench" / "soak.py"


def test_a_short_soak_ends_every_request_once_and_leaks_no_task() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", str(SOAK), "--requests", "2000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("every request ended once: True") == 2, result.stdout
    assert "never awaited" not in result.stderr
