"""`import maxllm_gate` stays light: no LiteLLM, tiktoken, rich, httpx or Redis client."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("litellm", "tiktoken", "rich", "httpx", "redis", "coredis", "openai", "structlog")


def _imported_after(statement: str) -> list[str]:
    """The HEAVY modules loaded by ``statement``, in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return [name for name in result.stdout.strip().split(",") if name]


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    assert _imported_after("import maxllm_gate") == []


@pytest.mark.parametrize(
    "statement",
    [
        "from maxllm_gate import maxllm_gate, SimulatedProvider, KeyConfig",
        "import maxllm_gate.cli",
    ],
)
def test_the_client_and_the_command_line_load_no_heavy_dependency(statement: str) -> None:
    assert _imported_after(statement) == []


def test_the_public_names_are_all_there() -> None:
    code = "import maxllm_gate\nprint(all(hasattr(maxllm_gate, n) for n in maxllm_gate.__all__))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("statement", "upper"),
    [
        # Storage does not depend on the actors that use it.
        ("import maxllm_gate.state.redis, maxllm_gate.state.memory", "maxllm_gate.actors"),
        # The batch runner is built on the client, not the other way round.
        ("import maxllm_gate.client", "maxllm_gate.batch"),
    ],
)
def test_a_layer_loads_none_above_it(statement: str, upper: str) -> None:
    code = f"import sys\n{statement}\nprint(any(m.startswith({upper!r}) for m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"


def test_the_hybrid_limiter_is_still_where_0_8_put_it() -> None:
    from maxllm_gate.redis_backend import HybridRateLimiter
    from maxllm_gate.state.hybrid import HybridRateLimiter as in_state

    assert HybridRateLimiter is in_state
