"""`import maxllm_gate` stays light: no LiteLLM, no tiktoken, no httpx."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    code = (
        "import sys, maxllm_gate\n"
        "heavy = [m for m in ('litellm', 'tiktoken', 'httpx', 'openai') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
