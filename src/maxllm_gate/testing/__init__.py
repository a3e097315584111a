"""Helpers for testing code that uses maxllm_gate: virtual time, and providers to test
against (an in-process simulated one, and a fake OpenAI-compatible HTTP server).

Virtual time with anyio's pytest plugin: `virtual_time_backend`. With pytest-trio,
ask for its ``autojump_clock`` fixture and pass a `SimulatedProvider`; docs/testing.md
("With pytest-trio") has the recipe, which tests/testing/test_pytest_trio_recipe.py runs.
"""

from typing import Any

from maxllm_gate.testing.virtual_time import (
    VirtualTimeEventLoop,
    run_virtual,
    seeded_trio_scheduler,
    virtual_time_backend,
)

__all__ = [
    "FakeProvider",
    "SimulatedProvider",
    "VirtualTimeEventLoop",
    "fake_provider_process",
    "format_go_duration",
    "key_fingerprint",
    "run_virtual",
    "seeded_trio_scheduler",
    "virtual_time_backend",
]

_FAKE = ("FakeProvider", "fake_provider_process", "format_go_duration", "key_fingerprint")


def __getattr__(name: str) -> Any:
    # Lazy: the simulated provider imports this package's model of a provider's limits,
    # and a test of virtual time alone need not load the HTTP server.
    if name == "SimulatedProvider":
        from maxllm_gate.providers.simulated import SimulatedProvider

        return SimulatedProvider
    if name in _FAKE:
        from maxllm_gate.testing import fake_provider

        return getattr(fake_provider, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
