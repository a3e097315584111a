"""One suite, two backends: MemoryState and RedisState must behave the same.

Real clock (Redis needs real sockets), so times are compared within a few
hundredths of a second: a round trip, plus RedisState's jitter (at most 1% of a wait).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from maxllm_gate.limits import DAY, CellSpec, Cost, LimitSpec
from maxllm_gate.providers.headers import RateLimitInfo
from maxllm_gate.state import MemoryState, StateBackend
from maxllm_gate.state.base import Adjust, Learn
from maxllm_gate.state.redis import RedisState

pytestmark = pytest.mark.anyio

KEY, MODEL = "k1", "m1"
CLOSE = 0.05  # seconds: how far a measured wait may be from the exact one


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[StateBackend]:
    if request.param == "memory":
        yield MemoryState(margin=0.0)
    else:
        redis_url = request.getfixturevalue("redis_url")
        async with RedisState(redis_url, margin=0.0, prefix=prefix, cold_start=0.0) as redis:
            yield redis


def spec(
    rpm: float = 60, tpm: float = 60_000, rpm_capacity: float = 3, tpm_capacity: float = 1000
) -> LimitSpec:
    return LimitSpec(rpm, tpm, rpm_capacity, tpm_capacity)


async def test_reserve_until_full_then_the_wait_is_the_refill(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(rpm=60, rpm_capacity=3))  # one request a second
    assert [await state.reserve(KEY, MODEL, Cost(tokens=1)) for _ in range(3)] == [0.0] * 3
    wait = await state.reserve(KEY, MODEL, Cost(tokens=1))
    assert wait == pytest.approx(1.0, abs=CLOSE)
    await anyio.sleep(wait)
    assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0


async def test_weighted_costs_wait_for_their_share_of_the_refill(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(tpm=6000, tpm_capacity=100))  # 100 tokens a second
    assert await state.reserve(KEY, MODEL, Cost(tokens=100)) == 0.0
    assert await state.reserve(KEY, MODEL, Cost(tokens=40)) == pytest.approx(0.4, abs=CLOSE)


async def test_both_buckets_or_neither(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(rpm_capacity=10, tpm=600, tpm_capacity=100))  # 10 tok/s
    assert await state.reserve(KEY, MODEL, Cost(tokens=80)) == 0.0
    wait = await state.reserve(KEY, MODEL, Cost(tokens=50))  # requests fit, tokens do not
    assert wait == pytest.approx(3.0, abs=CLOSE)
    snap = state.snapshot(KEY, MODEL)
    assert snap.requests_available == pytest.approx(9.0, abs=0.1)  # the request was not taken
    assert snap.tokens_available == pytest.approx(20.0, abs=1.0)
    assert await state.reserve(KEY, MODEL, Cost(tokens=15)) == 0.0


async def test_margin_admits_that_much_after_the_exact_fit(
    state: StateBackend, request: pytest.FixtureRequest, prefix: str
) -> None:
    if isinstance(state, RedisState):
        redis_url = request.getfixturevalue("redis_url")
        state = RedisState(
            redis_url, margin=0.2, prefix=prefix + "-margin", jitter=0.0, cold_start=0.0
        )
        await state.connect()
    else:
        state = MemoryState(margin=0.2)
    try:
        state.register(KEY, MODEL, spec(rpm=60, rpm_capacity=1))
        assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
        assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == pytest.approx(1.2, abs=CLOSE)
    finally:
        if isinstance(state, RedisState):
            await state.aclose()


async def test_cooldown_blocks_everything_until_it_ends(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec())
    await state.cool_down(KEY, MODEL, 0.5)
    assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == pytest.approx(0.5, abs=CLOSE)
    snap = state.snapshot(KEY, MODEL)
    assert snap.cooldown_remaining == pytest.approx(0.5, abs=CLOSE)
    assert snap.utilization == 1.0
    assert state.utilization(KEY, MODEL, anyio.current_time()) == 1.0
    await state.cool_down(KEY, MODEL, 0.1)  # a shorter cooldown does not shorten it
    assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == pytest.approx(0.5, abs=CLOSE)
    await anyio.sleep(0.5)
    assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0


async def test_adjust_charges_and_refunds(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(rpm_capacity=10, tpm=60, tpm_capacity=100))  # 1 tok/s
    await state.reserve(KEY, MODEL, Cost(tokens=50))
    await state.adjust(KEY, MODEL, 0.0, -30.0)
    assert state.snapshot(KEY, MODEL).tokens_available == pytest.approx(80.0, abs=0.5)
    await state.adjust(KEY, MODEL, 2.0, 60.0)
    snap = state.snapshot(KEY, MODEL)
    assert snap.tokens_available == pytest.approx(20.0, abs=0.5)
    assert snap.requests_available == pytest.approx(7.0, abs=0.1)
    await state.adjust(KEY, MODEL, 0.0, -500.0)  # a refund never overfills the bucket
    assert state.snapshot(KEY, MODEL).tokens_available == pytest.approx(100.0)


async def test_release_gives_back_at_most_the_phantom(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(tpm=60, tpm_capacity=100))  # 1 token a second
    await state.reserve(KEY, MODEL, Cost(tokens=60, over_tokens=20))
    await state.release(KEY, MODEL, 50.0)
    assert state.snapshot(KEY, MODEL).tokens_available == pytest.approx(60.0, abs=0.5)
    await state.release(KEY, MODEL, 10.0)  # nothing left to release
    assert state.snapshot(KEY, MODEL).tokens_available == pytest.approx(60.0, abs=0.5)


async def test_release_is_capped_by_the_debt_left(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(tpm=6000, tpm_capacity=100))  # 100 tokens a second
    await state.reserve(KEY, MODEL, Cost(tokens=30, over_tokens=20))
    await anyio.sleep(0.25)  # 25 refilled: 5 tokens of debt left, so 5 of phantom at most
    await state.adjust(KEY, MODEL, 0.0, 50.0)
    await state.release(KEY, MODEL, 20.0)
    # 100 - (5 + 50 - 5) = 50 available; releasing all 20 would have made it 65.
    assert state.snapshot(KEY, MODEL).tokens_available == pytest.approx(50.0, abs=4.0)


async def test_learn_lowers_availability_and_never_raises_it(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(tpm=600, tpm_capacity=100))  # 10 tokens a second
    await state.reserve(KEY, MODEL, Cost(tokens=10))
    info = RateLimitInfo(remaining_tokens=30)
    await state.learn(KEY, MODEL, info, since=0.0, charged_tokens=10, charged_requests=1)
    assert state.snapshot(KEY, MODEL).tokens_available == pytest.approx(30.0, abs=0.5)
    info = RateLimitInfo(remaining_tokens=95)
    await state.learn(KEY, MODEL, info, since=0.0, charged_tokens=0, charged_requests=1)
    assert state.snapshot(KEY, MODEL).tokens_available == pytest.approx(30.0, abs=0.5)


async def test_learn_counts_the_refill_since_the_call_was_admitted(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(tpm=600, tpm_capacity=100))  # 10 tokens a second
    await state.reserve(KEY, MODEL, Cost(tokens=10))
    info = RateLimitInfo(remaining_tokens=20)
    await state.learn(KEY, MODEL, info, since=2.0, charged_tokens=10, charged_requests=1)
    assert state.snapshot(KEY, MODEL).tokens_available == pytest.approx(40.0, abs=0.5)


async def test_learn_adopts_a_larger_capacity(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(tpm=6000, tpm_capacity=100))
    await state.reserve(KEY, MODEL, Cost(tokens=10))
    info = RateLimitInfo(remaining_tokens=500)
    await state.learn(KEY, MODEL, info, since=0.0, charged_tokens=10, charged_requests=1)
    snap = state.snapshot(KEY, MODEL)
    assert snap.tokens_capacity == pytest.approx(510.0)
    assert snap.tokens_available == pytest.approx(500.0, abs=5.0)
    assert await state.reserve(KEY, MODEL, Cost(tokens=400)) == 0.0


async def test_learn_adopts_a_lower_limit(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(rpm=60, rpm_capacity=3))
    info = RateLimitInfo(limit_requests=30, remaining_requests=1)
    await state.learn(KEY, MODEL, info, since=0.0, charged_tokens=0, charged_requests=1)
    snap = state.snapshot(KEY, MODEL)
    assert snap.requests_capacity == pytest.approx(2.0)  # 3 halved, then 1 + 1 learned
    assert snap.requests_available == pytest.approx(1.0, abs=0.05)
    assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
    # One request every 2 s now, not every second.
    assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == pytest.approx(2.0, abs=CLOSE)


async def test_learn_ignores_per_day_request_counts(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(rpm=60, rpm_capacity=3))
    info = RateLimitInfo(limit_requests=14_400, remaining_requests=0, requests_per_day=True)
    await state.learn(KEY, MODEL, info, since=0.0, charged_tokens=0, charged_requests=1)
    assert state.snapshot(KEY, MODEL).requests_available == pytest.approx(3.0)


async def test_mark_snapshot_and_utilization(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(rpm_capacity=4, tpm=60, tpm_capacity=100))
    snap = state.snapshot(KEY, MODEL)
    assert (snap.requests_available, snap.tokens_available) == (4.0, 100.0)
    assert (snap.rpm_limit, snap.tpm_limit, snap.cooldown_remaining) == (60, 60, 0.0)
    assert state.utilization(KEY, MODEL, anyio.current_time()) == 0.0
    before = state.mark(KEY, MODEL)
    await state.reserve(KEY, MODEL, Cost(tokens=50))
    after = state.mark(KEY, MODEL)
    assert after is not before
    assert (after.requests, after.tokens) == (before.requests + 1, before.tokens + 50)
    await state.reserve(KEY, MODEL, Cost(tokens=500))  # refused: admits nothing
    assert state.mark(KEY, MODEL) is after
    assert state.utilization(KEY, MODEL, anyio.current_time()) == pytest.approx(0.5, abs=0.02)
    assert state.snapshot(KEY, MODEL).utilization == pytest.approx(0.5, abs=0.02)


async def test_started_moves_a_charge_that_began_from_full(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(rpm=60, rpm_capacity=2))
    admitted_at = anyio.current_time()
    await state.reserve(KEY, MODEL, Cost(tokens=1))
    mark = state.mark(KEY, MODEL)
    await anyio.sleep(0.3)  # the call leaves 0.3 s after its admission
    await state.started(KEY, MODEL, mark, admitted_at)
    # Its charge starts now: 1 available, not the 1.3 a charge made at admission leaves.
    assert state.snapshot(KEY, MODEL).requests_available == pytest.approx(1.0, abs=0.05)


async def test_started_moves_the_charges_admitted_after_a_late_call_too(
    state: StateBackend,
) -> None:
    state.register(KEY, MODEL, spec(rpm=60, rpm_capacity=3))
    admitted_at = anyio.current_time()
    await state.reserve(KEY, MODEL, Cost(tokens=1))
    mark = state.mark(KEY, MODEL)
    await state.reserve(KEY, MODEL, Cost(tokens=1))  # another admission since
    await anyio.sleep(0.3)
    await state.started(KEY, MODEL, mark, admitted_at)
    # The provider charges the first at its arrival, the second after it: 1 left,
    # not the 1.3 our admissions alone leave.
    assert state.snapshot(KEY, MODEL).requests_available == pytest.approx(1.0, abs=0.05)


async def test_started_moves_a_charge_only_by_what_its_bucket_was_not_behind(
    state: StateBackend,
) -> None:
    state.register(KEY, MODEL, spec(rpm=60, rpm_capacity=3))
    await state.reserve(KEY, MODEL, Cost(tokens=1))
    admitted_at = anyio.current_time()
    await state.reserve(KEY, MODEL, Cost(tokens=1))  # its bucket was 1 s behind full
    mark = state.mark(KEY, MODEL)
    await anyio.sleep(0.5)
    await state.started(KEY, MODEL, mark, admitted_at)  # 0.5 s late: behind enough
    assert state.snapshot(KEY, MODEL).requests_available == pytest.approx(1.5, abs=0.05)
    await anyio.sleep(1.0)
    await state.started(KEY, MODEL, mark, admitted_at)  # 1.5 s late: 0.5 s past it
    assert state.snapshot(KEY, MODEL).requests_available == pytest.approx(2.0, abs=0.05)


async def test_started_told_twice_moves_a_charge_once(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec(rpm=60, rpm_capacity=2))
    admitted_at = anyio.current_time()
    await state.reserve(KEY, MODEL, Cost(tokens=1))
    mark = state.mark(KEY, MODEL)
    await anyio.sleep(0.2)
    await state.started(KEY, MODEL, mark, admitted_at)  # still unsent: at least this late
    await state.started(KEY, MODEL, mark, admitted_at, at=admitted_at + 0.3)  # the real send
    await state.started(KEY, MODEL, mark, admitted_at, at=admitted_at + 0.3)  # said again
    assert state.snapshot(KEY, MODEL).requests_available == pytest.approx(0.9, abs=0.05)


async def test_unregister_forgets_the_key_here(state: StateBackend) -> None:
    state.register(KEY, MODEL, spec())
    state.unregister(KEY)
    await state.adjust(KEY, MODEL, 1.0, 1.0)  # ignored, as are release/learn/cool_down
    await state.cool_down(KEY, MODEL, 1.0)
    with pytest.raises(KeyError):
        await state.reserve(KEY, MODEL, Cost(tokens=1))


# -- extra cells: output tokens per minute, daily caps ------------------------------------


def with_extra(*extra: CellSpec, rpm: float = 600, tpm: float = 60_000) -> LimitSpec:
    return LimitSpec(rpm, tpm, rpm / 6, tpm / 6, extra=extra)  # 10 s of burst


async def test_a_daily_request_cap_admits_its_day_then_waits_for_the_refill(
    state: StateBackend,
) -> None:
    state.register(KEY, MODEL, with_extra(CellSpec.requests_per_day(5)))
    assert [await state.reserve(KEY, MODEL, Cost(tokens=1)) for _ in range(5)] == [0.0] * 5
    wait = await state.reserve(KEY, MODEL, Cost(tokens=1))
    assert wait == pytest.approx(DAY / 5, rel=0.02)  # one request's share of a day
    snap = state.snapshot(KEY, MODEL)
    assert snap.requests_available == pytest.approx(95.0, abs=0.1)  # the 6th took nothing
    assert [(c.name, c.limit, c.window) for c in snap.extra] == [("rpd_limit", 5, DAY)]
    assert snap.extra[0].available == pytest.approx(0.0, abs=0.01)
    assert snap.extra[0].full_in == pytest.approx(DAY, rel=0.01)
    assert snap.exhausted() == ["rpd_limit"]


async def test_output_tokens_are_charged_on_their_own_cell(state: StateBackend) -> None:
    state.register(KEY, MODEL, with_extra(CellSpec.output_tokens_per_minute(600, 10.0)))
    assert await state.reserve(KEY, MODEL, Cost(tokens=50, output_tokens=80)) == 0.0
    snap = state.snapshot(KEY, MODEL)
    assert snap.tokens_available == pytest.approx(10_000 - 50, abs=20.0)
    assert snap.extra[0].available == pytest.approx(20.0, abs=0.5)
    wait = await state.reserve(KEY, MODEL, Cost(tokens=1, output_tokens=50))
    assert wait == pytest.approx(3.0, abs=CLOSE)  # 30 short, at 10 a second
    await state.settle(KEY, MODEL, [Adjust(0.0, 0.0, -60.0)])  # the answer used 20 of its 80
    snap = state.snapshot(KEY, MODEL)
    assert snap.extra[0].available == pytest.approx(80.0, abs=0.5)
    assert snap.tokens_available == pytest.approx(10_000 - 50, abs=20.0)
    assert await state.reserve(KEY, MODEL, Cost(tokens=1, output_tokens=50)) == 0.0


async def test_a_daily_token_cap_counts_input_and_output_and_releases_over_tokens(
    state: StateBackend,
) -> None:
    state.register(KEY, MODEL, with_extra(CellSpec.tokens_per_day(1000)))
    cost = Cost(tokens=300, over_tokens=100, output_tokens=200)
    assert await state.reserve(KEY, MODEL, cost) == 0.0
    assert state.snapshot(KEY, MODEL).extra[0].available == pytest.approx(500.0, abs=0.1)
    await state.release(KEY, MODEL, 100.0)
    assert state.snapshot(KEY, MODEL).extra[0].available == pytest.approx(600.0, abs=0.1)
    assert await state.reserve(KEY, MODEL, Cost(tokens=700)) > 60.0


async def test_per_day_request_headers_feed_the_daily_cap(state: StateBackend) -> None:
    state.register(KEY, MODEL, with_extra(CellSpec.requests_per_day(14_400)))
    await state.reserve(KEY, MODEL, Cost(tokens=1))
    info = RateLimitInfo(limit_requests=14_400, remaining_requests=3, requests_per_day=True)
    await state.learn(KEY, MODEL, info, since=0.0, charged_tokens=1, charged_requests=1)
    snap = state.snapshot(KEY, MODEL)
    assert snap.extra[0].available == pytest.approx(3.0, abs=0.1)
    assert snap.extra[0].capacity == 14_400  # a day's limit, not a minute's
    assert snap.requests_available == pytest.approx(99.0, abs=0.1)  # per minute: untouched


async def test_output_token_headers_feed_the_output_cell(state: StateBackend) -> None:
    state.register(KEY, MODEL, with_extra(CellSpec.output_tokens_per_minute(6000, 10.0)))
    await state.reserve(KEY, MODEL, Cost(tokens=10, output_tokens=100))
    info = RateLimitInfo(remaining_output_tokens=400, limit_output_tokens=3000)
    await state.settle(KEY, MODEL, [Learn(info, 0.0, 10.0, 1.0, charged_output_tokens=100.0)])
    snap = state.snapshot(KEY, MODEL)
    assert snap.extra[0].capacity == pytest.approx(500.0)  # 1000 halved with the rate
    assert snap.extra[0].available == pytest.approx(400.0, abs=1.0)
    assert snap.tokens_available == pytest.approx(10_000 - 10, abs=20.0)
