"""The fault suite logs at DEBUG, so that every line any fault path writes is
captured and searched for API keys by ``tests/test_secrets.py``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from maxllm_gate._logging import configure_logging


@pytest.fixture(autouse=True)
def debug_logging() -> Iterator[None]:
    configure_logging("DEBUG")
    try:
        yield
    finally:
        configure_logging("WARNING")


# A real Redis for the fault tests that share state through it (and for the lead's
# test_redis_faults.py): the same fixtures as the state tests.
from tests.state.conftest import RedisServer, free_port, prefix, redis_server, redis_url  # noqa: E402, F401
