"""Every async test runs under asyncio and trio, both on virtual time."""

from __future__ import annotations

from typing import Any

import pytest

from maxllm_gate.testing import virtual_time_backend

pytest_plugins = ["tests.secret_audit"]  # keeps what every test printed, for the key audit


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return virtual_time_backend(request.param)
