"""Hypothesis profiles for the property tests.

``ci`` (the default) runs a fixed, derandomized set of examples per property, so a
run is repeatable and its time bounded; ``explore`` draws new random examples, many
more of them; ``HYPOTHESIS_PROFILE=explore pytest tests/property`` picks it. Add
``--hypothesis-show-statistics`` to see how many examples each property ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from maxllm_gate import _logging

settings.register_profile(
    "ci",
    max_examples=300,
    derandomize=True,
    deadline=None,  # the machine is shared: time each example by the suite, not here
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("explore", max_examples=5000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def forget_fuzzed_secrets() -> Iterator[None]:
    """Every client registers its API keys as secrets for the rest of the process, so
    that no log line shows them. The fuzz tests make clients with keys such as "0",
    which would then mask every "0" the later tests log: forget them afterwards."""
    saved = set(_logging._secrets)
    try:
        yield
    finally:
        _logging._secrets.intersection_update(saved)
