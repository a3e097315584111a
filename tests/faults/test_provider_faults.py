"""Provider faults on virtual time: 5xx bursts, hangs, 429 storms, missing headers,
lower real limits, revoked keys. Each test sends many requests at once and checks
that every one ends in exactly one result or one clear error, and counts the
requests the provider saw more than once (``SimulatedProvider.sends``)."""

from __future__ import annotations

import anyio
import pytest

from maxllm_gate import (
    AuthenticationError,
    NoKeyAvailableError,
    RateLimitError,
    SimulatedProvider,
    TransientError,
    maxllm_gate,
)
from maxllm_gate.providers.base import ProviderCall, ProviderResponse
from tests.faults.outcomes import assert_settled, send_all
from tests.support import MODEL, make_key

pytestmark = pytest.mark.anyio

KEYS = [make_key("k1", 600, 60_000), make_key("k2", 600, 60_000), make_key("k3", 300, 30_000)]


class Recording(SimulatedProvider):
    """Also records when each call arrived and how it ended: (time, key, outcome)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.log: list[tuple[float, str, str]] = []

    async def complete(self, call: ProviderCall) -> ProviderResponse:
        arrived = anyio.current_time()
        try:
            response = await super().complete(call)
        except BaseException as exc:
            self.log.append((arrived, call.key_id, type(exc).__name__))
            raise
        self.log.append((arrived, call.key_id, "ok"))
        return response


async def test_a_burst_of_5xx_is_retried_until_every_request_succeeds() -> None:
    provider = SimulatedProvider(latency=0.2)
    provider.inject(TransientError("internal error", status_code=500), times=20)
    provider.inject(TransientError("overloaded", status_code=503), times=20)
    async with maxllm_gate(
        keys=KEYS, provider=provider, max_retries=10, retry_base_delay=0.5
    ) as client:
        outcomes = await send_all(client, 100, within=120, max_tokens=50)
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 100
    assert provider.accepted == 100  # one answer per request: none delivered twice
    # Every resend follows a 5xx the provider answered; none was a silent duplicate.
    assert sum(provider.sends.values()) == 100 + 40
    assert sum(r.attempts for r in outcomes.results) == 140


async def test_with_no_retries_left_a_5xx_is_the_callers_one_clear_error() -> None:
    provider = SimulatedProvider(latency=0.2)
    provider.inject(TransientError("internal error", status_code=500), times=30)
    async with maxllm_gate(keys=KEYS, provider=provider, max_retries=0) as client:
        outcomes = await send_all(client, 100, within=120, max_tokens=50)
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert outcomes.error_types() == {"TransientError": 30}
    assert {e.status_code for e in outcomes.errors} == {500}  # type: ignore[attr-defined]
    assert len(outcomes.results) == 70
    assert provider.duplicates == 0


async def test_hung_calls_are_cut_by_call_timeout_and_sent_again() -> None:
    provider = SimulatedProvider(latency=0.5)
    provider.hang(times=8)
    async with maxllm_gate(keys=KEYS, provider=provider, call_timeout=5.0) as client:
        outcomes = await send_all(client, 60, within=120, max_tokens=50)
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 60
    assert sum(s.hung for s in provider.stats.values()) == 8
    # The provider never answered those 8, so each was sent a second time.
    assert provider.duplicates == 8
    slow = [r for r in outcomes.results if r.attempts == 2]
    assert len(slow) == 8 and all(r.latency >= 5.0 for r in slow)


async def test_a_request_timeout_shorter_than_a_hang_is_the_callers_clear_error() -> None:
    provider = SimulatedProvider(latency=0.5)
    provider.hang(times=5)
    async with maxllm_gate(keys=KEYS, provider=provider, call_timeout=600.0) as client:
        outcomes = await send_all(client, 40, within=60, max_tokens=50, timeout=10.0)
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert outcomes.error_types() == {"RequestTimeoutError": 5}
    assert all("on key" in str(e) for e in outcomes.errors)
    assert provider.duplicates == 0


async def test_a_429_storm_with_retry_after_cools_the_key_and_no_caller_sees_a_429() -> None:
    provider = Recording(latency=0.2)
    provider.inject(
        RateLimitError("slow down", status_code=429, retry_after=4.0), times=12, key_id="k1"
    )
    async with maxllm_gate(keys=KEYS, provider=provider, max_retries=0) as client:
        outcomes = await send_all(client, 150, within=120, max_tokens=50, spacing=0.02)
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 150  # not one RateLimitError, even with no retries
    storms = [t for t, key, what in provider.log if key == "k1" and what == "RateLimitError"]
    # 429s with no rate-limit headers teach k1 a lower rate (limits.calibration), so the
    # others take more of the work and not every injected 429 is drawn.
    assert 2 <= len(storms) <= 12
    assert client.capacity()["keys"]["k1"]["models"][MODEL]["tokens_scale"] < 1.0
    # After each 429, k1 is left alone for the whole retry-after.
    for t429 in storms:
        inside = [t for t, key, _ in provider.log if key == "k1" and t429 < t < t429 + 4.0]
        assert inside == [] or all(t in storms for t in inside), (t429, inside)
    assert client.status()["keys"]["k1"]["rate_limited"] == len(storms)


async def test_a_provider_that_sends_no_rate_limit_headers_draws_no_429() -> None:
    provider = SimulatedProvider(latency=0.3, send_headers=False)
    async with maxllm_gate(keys=KEYS, provider=provider) as client:
        outcomes = await send_all(client, 200, within=300, max_tokens=200)
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 200
    assert provider.rate_limited == 0


async def test_with_lower_real_limits_the_gate_learns_them_and_the_429s_stop() -> None:
    real = {"k1": {MODEL: (150, 15_000)}, "k2": {MODEL: (120, 60_000)}, "k3": {MODEL: (300, 6_000)}}
    provider = Recording(latency=0.3, limits=real)
    async with maxllm_gate(keys=KEYS, provider=provider) as client:
        start = anyio.current_time()
        outcomes = await send_all(client, 300, within=600, max_tokens=100)
        end = anyio.current_time()
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 300
    limited = [t - start for t, _, what in provider.log if what == "RateLimitError"]
    # Only the first burst, sized by the configured limits, draws 429s: once the first
    # answers' headers arrive (after 0.3 s), the gate runs at the real limits.
    assert limited and all(t < 0.3 for t in limited), limited
    assert end - start > 10  # the learned, lower limits pace the run


async def test_a_key_revoked_mid_run_is_disabled_and_its_traffic_moves_on() -> None:
    provider = SimulatedProvider(latency=0.3)
    async with maxllm_gate(keys=KEYS, provider=provider) as client:

        async def revoke_later() -> None:
            await anyio.sleep(3.0)
            provider.revoke("k1")

        async with anyio.create_task_group() as tg:
            tg.start_soon(revoke_later)
            outcomes = await send_all(client, 300, within=300, max_tokens=100, spacing=0.02)
        status = client.status()
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert len(outcomes.results) == 300
    assert status["keys"]["k1"]["enabled"] is False
    assert "AuthenticationError" in status["keys"]["k1"]["disabled_reason"]
    # The calls refused with 401 were never run: resending them is not a duplicate.
    assert provider.stats["k1"].faults >= 1
    assert provider.duplicates == provider.stats["k1"].faults


async def test_every_key_of_a_model_revoked_ends_each_request_with_a_clear_error() -> None:
    provider = SimulatedProvider(latency=0.3)
    async with maxllm_gate(keys=KEYS, provider=provider) as client:

        async def revoke_all_later() -> None:
            await anyio.sleep(2.0)
            for key in KEYS:
                provider.revoke(key.key_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(revoke_all_later)
            outcomes = await send_all(client, 300, within=60, max_tokens=100, spacing=0.01)
        with pytest.raises(NoKeyAvailableError, match="disabled"):
            await client.chat(MODEL, "after")
        await assert_settled(client, [provider])
    outcomes.assert_each_ended_once()
    assert outcomes.results  # those answered before the revocation
    assert set(outcomes.error_types()) == {"NoKeyAvailableError"}
    assert all("every key serving model" in str(e) for e in outcomes.errors)
    assert not any(isinstance(e, AuthenticationError) for e in outcomes.errors)
