"""The client against providers whose accounting is not its own.

The simulated provider counts with its own rules (`maxllm_gate.testing.provider_limits`):
a character estimate by default, or a factor of it, or its own tokenizer, or lower
real limits than the keys are configured with. The client must learn each and draw
(almost) no 429s. Efficiency is the bound on what the provider itself debited,
over the makespan, on virtual time.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from maxllm_gate import (
    BadRequestError,
    RateLimitError,
    RequestTimeoutError,
    RequestTooLargeError,
    SimulatedProvider,
    TransientError,
    maxllm_gate,
)
from maxllm_gate.limits import LimitSpec, makespan_bound
from tests.support import MODEL, make_key

PROMPT = ("The quick brown fox jumps over the lazy dog. " * 27)[:1200]  # 1,200 characters
MAX_TOKENS = 200


def _keys(limits: list[tuple[int, int]]) -> list[Any]:
    return [make_key(f"k{i}", rpm, tpm) for i, (rpm, tpm) in enumerate(limits)]


async def _run(
    client: maxllm_gate, provider: SimulatedProvider, requests: int, limits: list[tuple[int, int]]
) -> float:
    """Send ``requests`` at once; returns the efficiency against the provider's own debit."""
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        for _ in range(requests):
            tg.start_soon(lambda: client.chat(MODEL, PROMPT, max_tokens=MAX_TOKENS))
    makespan = anyio.current_time() - start
    debited = sum(s.charged_tokens for s in provider.stats.values())
    specs = [LimitSpec.from_limits(rpm, tpm, provider.burst_window) for rpm, tpm in limits]
    return makespan_bound(requests, debited, specs) / makespan


STRICT = [(600, 60_000)] * 3


@pytest.mark.anyio
async def test_a_provider_counting_characters_sees_no_429() -> None:
    provider = SimulatedProvider(latency=0.2)
    async with maxllm_gate(keys=_keys(STRICT), provider=provider) as client:
        efficiency = await _run(client, provider, 160, STRICT)
    assert provider.rate_limited == 0
    assert efficiency >= 0.95


@pytest.mark.anyio
async def test_a_provider_charging_1_3_times_its_estimate_is_learned_within_two_429s() -> None:
    provider = SimulatedProvider(latency=0.2, charge_factor=1.3)
    async with maxllm_gate(keys=_keys(STRICT), provider=provider) as client:
        efficiency = await _run(client, provider, 160, STRICT)
        learned = client.capacity()["keys"]["k0"]["models"][MODEL]["charge_factor"]
        assert client.status()["keys"]["k0"]["calibration"][MODEL]["charge_factor"] == learned
    assert all(s.rate_limited <= 2 for s in provider.stats.values()), provider.stats
    assert efficiency >= 0.93
    # 1.3 x 300 + 200 over our 300 + 200: the factor on the whole charge, cushion aside.
    assert learned == pytest.approx(590 / 500, rel=0.03)


@pytest.mark.anyio
async def test_a_provider_counting_with_its_own_tokenizer_is_learned_both_ways() -> None:
    provider = SimulatedProvider(latency=0.2, charge="tokens")
    async with maxllm_gate(keys=_keys(STRICT), provider=provider) as client:
        efficiency = await _run(client, provider, 160, STRICT)
        learned = client.capacity()["keys"]["k0"]["models"][MODEL]["charge_factor"]
    assert provider.rate_limited <= 3
    assert learned < 1.0  # its tokens are fewer than our characters / 4: more fits
    assert efficiency >= 0.93


@pytest.mark.anyio
async def test_lower_real_limits_with_headers_are_adopted() -> None:
    configured = [(600, 60_000)] * 2
    real = {"k0": {MODEL: (300.0, 30_000.0)}, "k1": {MODEL: (300.0, 30_000.0)}}
    provider = SimulatedProvider(latency=0.2, limits=real)
    async with maxllm_gate(keys=_keys(configured), provider=provider) as client:
        efficiency = await _run(client, provider, 200, [(300, 30_000)] * 2)
    assert provider.rate_limited <= 4
    assert efficiency >= 0.85


@pytest.mark.anyio
async def test_lower_real_limits_without_headers_are_learned_from_429s() -> None:
    configured = [(600, 60_000)] * 3
    real = {f"k{i}": {MODEL: (300.0, 30_000.0)} for i in range(3)}
    provider = SimulatedProvider(latency=0.2, limits=real, send_headers=False)
    async with maxllm_gate(keys=_keys(configured), provider=provider) as client:
        efficiency = await _run(client, provider, 600, [(300, 30_000)] * 3)
        scale = client.capacity()["keys"]["k0"]["models"][MODEL]["tokens_scale"]
    assert provider.rate_limited <= 10
    assert efficiency >= 0.85
    assert scale < 0.55


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("prompt", "max_tokens"), [("hi", 10**9), ("x" * 4 * 70_000, 10)], ids=["max_tokens", "prompt"]
)
async def test_a_request_no_key_could_ever_admit_is_refused_at_once(
    prompt: str, max_tokens: int
) -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=_keys(STRICT), provider=provider) as client:
        start = anyio.current_time()
        with pytest.raises(RequestTooLargeError, match=r"60000 tokens per minute") as caught:
            await client.chat(MODEL, prompt, max_tokens=max_tokens)
        assert anyio.current_time() == start
        assert client.status()["queued"] == 0 and not provider.sends
        assert "charges" in str(caught.value)
        # The keys are untouched: the next request goes at once.
        await client.chat(MODEL, "hello", max_tokens=10)
        assert anyio.current_time() == start


@pytest.mark.anyio
async def test_a_request_the_provider_rejects_gives_its_reservation_back() -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=_keys([(600, 10_000)]), provider=provider) as client:
        provider.inject(BadRequestError("context_length_exceeded", status_code=400))
        with pytest.raises(BadRequestError):
            await client.chat(MODEL, "hi", max_tokens=9_000)  # most of the minute's tokens
        start = anyio.current_time()
        await client.chat(MODEL, "hi", max_tokens=9_000)
        assert anyio.current_time() - start <= client.config.admission_margin  # no debt left


@pytest.mark.anyio
async def test_a_retry_after_of_years_cools_down_for_max_cooldown_only() -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=_keys([(600, 60_000)]), provider=provider) as client:
        provider.inject(RateLimitError("slow down", status_code=429, retry_after=299_999_064.0))
        start = anyio.current_time()
        await client.chat(MODEL, "hi", max_tokens=10)
        assert anyio.current_time() - start == pytest.approx(client.config.max_cooldown, abs=0.1)


@pytest.mark.anyio
async def test_a_request_refused_with_429s_again_and_again_ends_with_an_error() -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(
        keys=_keys([(600, 60_000)]), provider=provider, max_rate_limit_retries=3
    ) as client:
        provider.inject(RateLimitError("daily cap", status_code=429, retry_after=30.0), times=100)
        start = anyio.current_time()
        with pytest.raises(RateLimitError, match="4 times in 90s"):
            await client.chat(MODEL, "hi", max_tokens=10)
        assert sum(provider.sends.values()) == 4
        assert anyio.current_time() - start == pytest.approx(90.0, abs=1.0)


@pytest.mark.anyio
async def test_a_short_storm_of_429s_is_waited_out_however_many() -> None:
    # Contention (processes that lost their shared Redis for a moment) passes in seconds.
    provider = SimulatedProvider()
    async with maxllm_gate(
        keys=_keys([(600, 60_000)]), provider=provider, max_rate_limit_retries=3
    ) as client:
        provider.inject(RateLimitError("busy", status_code=429, retry_after=0.5), times=20)
        response = await client.chat(MODEL, "hi", max_tokens=10)
        assert response.attempts == 21


@pytest.mark.anyio
async def test_a_request_that_cannot_start_before_its_timeout_fails_at_once() -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=_keys([(600, 60_000)]), provider=provider) as client:
        provider.inject(RateLimitError("slow down", status_code=429, retry_after=30.0))
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.chat(MODEL, "first", max_tokens=10))
            await anyio.sleep(0.01)  # its 429 came back: the key cools down for 30 s
            start = anyio.current_time()
            with pytest.raises(RequestTimeoutError, match="cannot start before its timeout"):
                await client.chat(MODEL, "late", max_tokens=10, timeout=5.0)
            assert anyio.current_time() - start < 0.01
            # One that can wait that long is served when the key is back.
            await client.chat(MODEL, "patient", max_tokens=10, timeout=40.0)


@pytest.mark.anyio
async def test_a_request_too_large_for_one_key_goes_to_one_that_can_take_it() -> None:
    provider = SimulatedProvider()
    keys = _keys([(600, 5_000), (600, 60_000)])
    async with maxllm_gate(keys=keys, provider=provider, strategy="round_robin") as client:
        for _ in range(3):
            response = await client.chat(MODEL, "hi", max_tokens=8_000)
            assert response.key_used == "k1"
    assert provider.stats["k0"].calls == 0 and provider.rate_limited == 0


@pytest.mark.anyio
async def test_refusals_and_retries_among_calls_that_left_together_keep_the_actor_up() -> None:
    # Calls that leave together are paired for the calibration; a refusal or a retry
    # of one of a pair must leave the other's bookkeeping sound, whatever the order.
    provider = SimulatedProvider(latency=lambda call: 0.05 * (hash(call.request_id) % 4))
    provider.inject(TransientError("overloaded", status_code=503), times=10)
    provider.inject(RateLimitError("slow down", status_code=429, retry_after=0.05), times=10)
    provider.inject(BadRequestError("bad", status_code=400), times=5)
    async with maxllm_gate(
        keys=_keys([(6_000, 1_000_000)]), provider=provider, retry_base_delay=0.01
    ) as client:
        outcomes: list[object] = []

        async def one() -> None:
            try:
                outcomes.append(await client.chat(MODEL, "hi", max_tokens=10))
            except BadRequestError as exc:
                outcomes.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(60):
                tg.start_soon(one)
        actor = client._dispatcher.actors["k0"]
        assert not any(job.crowd for job in actor.in_flight)
        assert all(job.crowded >= 0 for job in actor.in_flight)
    assert len(outcomes) == 60
    assert sum(isinstance(o, BadRequestError) for o in outcomes) == 5
    # Each 503 and 429 sent its request once more; a crashed actor would resend more.
    assert sum(provider.sends.values()) == 60 + 10 + 10
