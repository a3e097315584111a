"""Test your own app deterministically: a minute of rate-limited traffic in milliseconds.

Run it with::

    python examples/virtual_time_testing.py

Code that waits on rate limits is slow and flaky to test on a real clock. On
virtual time the clock jumps to the next timer whenever every task is waiting,
so a test of minutes of traffic takes milliseconds and runs the same way every
time. ``maxllm_gate.testing.virtual_time_backend(name)`` gives the anyio
backend for that: ``VirtualTimeEventLoop`` for asyncio, ``MockClock`` for trio.

The ``test_*`` functions below are ordinary pytest tests. To run them with
anyio's pytest plugin (installed with anyio), put this in your ``conftest.py``::

    import pytest
    from maxllm_gate.testing import virtual_time_backend

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(request):
        return virtual_time_backend(request.param)  # a new MockClock per test

and mark the tests with ``@pytest.mark.anyio`` (or ``pytestmark = pytest.mark.anyio``).
Run as a script, this file runs each test under both backends itself.

Caveat: a task waiting on a thread (``anyio.to_thread``) or a socket looks idle,
so the clock may jump meanwhile. Keep real I/O out of virtual-time tests: use
``SimulatedProvider``, and model names tiktoken does not know (like the one
below), which are estimated in-process; an OpenAI model name makes the client
load its tokenizer in a worker thread the first time.
"""

import time

import anyio

from maxllm_gate import KeyConfig, RateLimitError, SimulatedProvider, maxllm_gate
from maxllm_gate.testing import virtual_time_backend

MODEL = "sim-model"


def make_client(provider: SimulatedProvider, rpm: int = 60) -> maxllm_gate:
    key = KeyConfig(
        api_key="sk-test",
        provider="openai",
        key_id="test-key",
        models={MODEL: {"rpm_limit": rpm, "tpm_limit": 1_000_000}},
    )
    return maxllm_gate(keys=[key], provider=provider)


# --- the application code under test ---------------------------------------------------


async def summarize_all(client: maxllm_gate, documents: list[str]) -> list[str]:
    """Summarize every document concurrently; the client paces the calls."""
    summaries = [""] * len(documents)

    async def one(i: int) -> None:
        response = await client.chat(MODEL, f"Summarize: {documents[i]}", max_tokens=100)
        summaries[i] = response.content or ""

    async with anyio.create_task_group() as tg:
        for i in range(len(documents)):
            tg.start_soon(one, i)
    return summaries


# --- the tests -------------------------------------------------------------------------


async def test_a_minute_of_traffic_is_paced_and_never_rate_limited() -> None:
    provider = SimulatedProvider(latency=0.5, completion_tokens=10)
    async with make_client(provider, rpm=60) as client:
        start = anyio.current_time()
        summaries = await summarize_all(client, [f"doc {i}" for i in range(61)])
        elapsed = anyio.current_time() - start
    assert all(summaries)
    # 60 RPM with a one-second burst: one at once, then one per second, each admitted
    # admission_margin (50 ms, an allowance for network jitter) after it fits.
    assert abs(elapsed - (60 * 1.05 + 0.5)) < 0.01, elapsed
    assert provider.rate_limited == 0


async def test_a_provider_429_is_retried_and_never_reaches_the_app() -> None:
    provider = SimulatedProvider()
    provider.inject(RateLimitError("slow down", status_code=429, retry_after=20.0))
    async with make_client(provider) as client:
        start = anyio.current_time()
        response = await client.chat(MODEL, "hello")
        waited = anyio.current_time() - start
    assert response.attempts == 2
    # The key cooled down for retry_after (plus the 50 ms admission margin).
    assert abs(waited - 20.05) < 0.01, waited


TESTS = [
    test_a_minute_of_traffic_is_paced_and_never_rate_limited,
    test_a_provider_429_is_retried_and_never_reaches_the_app,
]

if __name__ == "__main__":
    for backend_name in ("asyncio", "trio"):
        for test in TESTS:
            backend, options = virtual_time_backend(backend_name)  # a fresh clock per test
            wall = time.perf_counter()
            anyio.run(test, backend=backend, backend_options=options)
            real_ms = (time.perf_counter() - wall) * 1000
            print(f"{backend_name:7s} {test.__name__}: passed in {real_ms:.0f} ms of real time")
