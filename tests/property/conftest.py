"""Hypothesis profiles for the property tests.

``ci`` (the default) runs a fixed, derandomized set of examples per property, so a
run is repeatable and its time bounded; ``explore`` draws new random examples, many
more of them; ``HYPOTHESIS_PROFILE=explore pytest tests/property`` picks it. Add
``--hypothesis-show-statistics`` to see how many examples each property ran.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
