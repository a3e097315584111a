"""The pytest-trio recipe of docs/testing.md, run in pytest-trio's own mode.

Everything between the ``recipe`` markers is in the docs verbatim:
``tests/testing/test_pytest_trio_docs.py`` fails if the two drift apart.
"""

# recipe start
import pytest
import trio

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate

pytestmark = pytest.mark.trio  # pytest-trio runs these tests, not anyio's plugin

KEY = KeyConfig(
    api_key="sk-test",
    provider="openai",
    key_id="k1",
    models={"sim-model": {"rpm_limit": 60, "tpm_limit": 1_000_000}},
)


@pytest.fixture
async def client():
    # An async fixture of pytest-trio: the client's actors run for the whole test.
    async with maxllm_gate(keys=[KEY], provider=SimulatedProvider(latency=0.5)) as client:
        yield client


async def test_a_minute_of_traffic_in_virtual_time(client, autojump_clock):
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(61):
            nursery.start_soon(client.chat, "sim-model", f"request {i}")
    # 60 RPM, 1 s burst: one at once, then one per second (plus the 50 ms margin).
    assert trio.current_time() - start == pytest.approx(60 * 1.05 + 0.5)
    assert client.status()["keys"]["k1"]["rate_limited"] == 0  # no 429 from the provider


async def test_a_request_waits_for_capacity_instead_of_failing(client, autojump_clock):
    with trio.fail_after(5):  # virtual seconds: the second request waits ~1 s
        first = await client.chat("sim-model", "first")
        second = await client.chat("sim-model", "second")
    assert first.key_used == second.key_used == "k1"
    # recipe end
