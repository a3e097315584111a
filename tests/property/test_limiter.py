"""The limiter never admits more than the bucket allows, over any window.

Arbitrary sequences of arrivals, sizes, refunds, releases, header syncs,
cooldowns and re-anchorings drive a `BucketPair` (and, on virtual time, the
`MemoryState` the client uses). An oracle that knows nothing of GCRA then checks
every run of admissions, from the p-th to the q-th, for requests and for tokens::

    admitted p..q  <=  max(burst, cost of q) + limit/60 * (t_q - t_p) + given back between

where ``burst`` is the largest capacity the bucket had from just before the
p-th admission to the q-th (header syncs may learn a larger one); a request
larger than the whole bucket is admitted only into a full bucket, so it may
exceed it by itself. Refunds count at what was asked, an upper bound of what
came back; releases at most what was over-reserved and not yet released; and
only those made after the p-th admission: a give-back before it must not have
overfilled the bucket.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from maxllm_gate.limits import BucketPair, Cost, LimitSpec
from maxllm_gate.state import MemoryState

RPM, TPM = 600.0, 6_000.0  # 10 requests/s, 100 tokens/s

_wait = st.tuples(st.just("wait"), st.one_of(st.floats(0.0, 0.5), st.floats(0.0, 5.0)))
_reserve = st.tuples(
    st.just("reserve"),
    st.one_of(st.floats(1.0, 100.0), st.floats(1.0, 400.0)),  # tokens; 100 = a 1 s bucket
    st.floats(0.0, 0.5),  # the over-reserved share
)
_refund = st.tuples(st.just("refund"), st.sampled_from([0.0, 1.0]), st.floats(0.0, 300.0))
_release = st.tuples(st.just("release"), st.floats(0.0, 100.0))
_learn = st.tuples(
    st.just("learn"),
    st.floats(0.0, 10.0),  # remaining requests
    st.floats(0.0, 2_000.0),  # remaining tokens
    st.one_of(st.none(), st.floats(120.0, 1_200.0)),  # reported request limit
    st.one_of(st.none(), st.floats(1_500.0, 12_000.0)),  # reported token limit
    st.floats(0.0, 3.0),  # seconds since that call was admitted
)
_cool = st.tuples(st.just("cool_down"), st.floats(0.0, 1.0))
_start = st.tuples(st.just("start"), st.floats(0.0, 0.5))
#: Arrivals and give-backs only: the arithmetic at its tightest.
core_operations = st.lists(
    st.one_of(*[_reserve] * 6, *[_wait] * 3, _refund, _release), min_size=10, max_size=80
)
#: Everything, header syncs, cooldowns and re-anchoring included.
operations = st.lists(
    st.one_of(*[_reserve] * 8, *[_wait] * 4, _refund, _release, _learn, _cool, _start),
    min_size=10,
    max_size=80,
)
burst_seconds = st.sampled_from([0.5, 1.0, 10.0, 60.0])


@attrs.define
class Info:
    """A provider's rate-limit report, as `providers.headers` builds it."""

    remaining_requests: float | None
    remaining_tokens: float | None
    limit_requests: float | None
    limit_tokens: float | None
    requests_per_day: bool = False


@attrs.define
class Ledger:
    """What happened, in order, for the oracle: admissions and give-backs."""

    events: list[tuple[str, float, float, float]] = attrs.Factory(list)  # kind, t, req, tok
    capacity: tuple[float, float] = (0.0, 0.0)
    over_reserved: float = 0.0  # tokens admitted as over-reserved, not yet released

    def released(self, t: float, asked: float) -> None:
        credit = min(asked, self.over_reserved)
        self.over_reserved -= credit
        self.given_back(t, 0.0, credit)

    def admitted(self, t: float, requests: float, tokens: float) -> None:
        self.events.append(("admit", t, requests, tokens))

    def given_back(self, t: float, requests: float, tokens: float) -> None:
        self.events.append(("back", t, requests, tokens))

    def saw(self, pair: BucketPair) -> None:
        """Note the capacities, when they changed (a header sync)."""
        capacity = (pair.requests.capacity, pair.tokens.capacity)
        if capacity != self.capacity:
            self.capacity = capacity
            self.events.append(("capacity", math.nan, *capacity))


def assert_no_window_overruns(ledger: Ledger) -> int:
    """Check every run of admissions; returns how many windows were checked."""
    checked = 0
    for dim, rate in ((0, RPM / 60.0), (1, TPM / 60.0)):
        events = [(kind, t, amounts[dim]) for kind, t, *amounts in ledger.events]
        capacity = 0.0
        for p, (kind, start, amount) in enumerate(events):
            if kind == "capacity":
                capacity = amount  # the capacity from here on
            if kind != "admit":
                continue
            total = refunded = 0.0
            burst = capacity
            for kind_q, end, amount in events[p:]:
                if kind_q == "capacity":
                    burst = max(burst, amount)
                    continue
                if kind_q == "back":
                    refunded += amount
                    continue
                total += amount
                allowed = max(burst, amount) + rate * (end - start) + refunded
                assert total <= allowed + 1e-6 * max(1.0, allowed), (dim, start, end, total)
                checked += 1
    return checked


def apply(pair: BucketPair, op: tuple[Any, ...], now: float, ledger: Ledger) -> float:
    """Apply one operation at ``now`` to ``pair``; returns the new ``now``."""
    kind = op[0]
    if kind == "wait":
        return now + op[1]
    if kind == "reserve":
        cost = Cost(tokens=op[1], over_tokens=op[1] * op[2])
        if pair.reserve(now, cost) <= now:
            ledger.admitted(now, cost.requests, cost.tokens)
            ledger.over_reserved += cost.over_tokens
    elif kind == "refund":
        pair.adjust(now, -op[1], -op[2])
        ledger.given_back(now, op[1], op[2])
    elif kind == "release":
        pair.release(now, op[1])
        ledger.released(now, op[1])
    elif kind == "learn":
        _, requests, tokens, limit_requests, limit_tokens, since = op
        info = Info(requests, tokens, limit_requests, limit_tokens)
        pair.learn(now, info, measured_at=now - since, charged_tokens=50.0, charged_requests=1.0)
    elif kind == "cool_down":
        pair.cool_down(now + op[1])
    elif kind == "start":
        pair.start(pair.admitted, op[1])
    ledger.saw(pair)
    return now


@given(core_operations, burst_seconds)
def test_arrivals_and_refunds_never_overrun_a_bucket_pair_over_any_window(
    ops: list[tuple[Any, ...]], burst: float
) -> None:
    pair = BucketPair(LimitSpec.from_limits(RPM, TPM, burst))
    ledger = Ledger()
    ledger.saw(pair)
    now = 1_000.0
    for op in ops:
        now = apply(pair, op, now, ledger)
    assert assert_no_window_overruns(ledger) > 0 or not any(op[0] == "reserve" for op in ops)


@given(operations, burst_seconds)
def test_with_header_syncs_a_bucket_pair_never_overruns_any_window(
    ops: list[tuple[Any, ...]], burst: float
) -> None:
    pair = BucketPair(LimitSpec.from_limits(RPM, TPM, burst))
    ledger = Ledger()
    ledger.saw(pair)
    now = 1_000.0
    for op in ops:
        now = apply(pair, op, now, ledger)
    assert_no_window_overruns(ledger)


@given(
    st.floats(0.0, 2_000.0),
    st.floats(0.0, 3.0),
    st.one_of(st.none(), st.floats(100.0, 12_000.0)),
    st.floats(1.0, 400.0),
    burst_seconds,
)
def test_a_header_sync_never_raises_availability_above_what_the_report_proves(
    remaining: float, since: float, limit: float | None, spent: float, burst: float
) -> None:
    pair = BucketPair(LimitSpec.from_limits(RPM, TPM, burst))
    now = 1_000.0
    pair.reserve(now - since, Cost(tokens=spent))
    before = pair.tokens.available(now)
    grown = pair.tokens.capacity
    pair.learn(
        now,
        Info(None, remaining, None, limit),
        measured_at=now - since,
        charged_tokens=spent,
        charged_requests=1.0,
    )
    cell = pair.tokens
    proven = remaining + since / cell.interval  # what was left, plus the refill since
    assert cell.available(now) <= max(0.0, proven) + 1e-6
    # Only a larger learned bucket can add room, and only as much as it grew.
    assert cell.available(now) <= before + max(0.0, cell.capacity - grown) + 1e-6
    assert cell.capacity <= max(grown, cell.limit_per_minute) + 1e-6


def _on_virtual_time(body: Callable[[trio.testing.MockClock], Any]) -> None:
    clock = trio.testing.MockClock()
    trio.run(body, clock, clock=clock)


@given(operations, burst_seconds, st.sampled_from([0.0, 0.05]))
def test_memory_state_never_admits_more_than_it_allows_and_its_waits_are_exact(
    ops: list[tuple[Any, ...]], burst: float, margin: float
) -> None:
    async def body(clock: trio.testing.MockClock) -> None:
        state = MemoryState(margin=margin)
        state.register("k", "m", LimitSpec.from_limits(RPM, TPM, burst))
        pair = state.pair("k", "m")
        ledger = Ledger()
        ledger.saw(pair)
        clock.jump(1_000.0)
        for op in ops:
            now = trio.current_time()
            if op[0] == "wait":
                clock.jump(op[1])
            elif op[0] == "reserve":
                cost = Cost(tokens=op[1], over_tokens=op[1] * op[2])
                wait = await state.reserve("k", "m", cost)
                if wait == 0.0:
                    ledger.admitted(now, cost.requests, cost.tokens)
                    ledger.over_reserved += cost.over_tokens
                elif math.isfinite(wait):
                    # Liveness: after exactly the wait it was told, the same cost fits.
                    clock.jump(wait)
                    assert await state.reserve("k", "m", cost) == 0.0, (wait, op)
                    ledger.admitted(trio.current_time(), cost.requests, cost.tokens)
                    ledger.over_reserved += cost.over_tokens
            elif op[0] == "refund":
                await state.adjust("k", "m", -op[1], -op[2])
                ledger.given_back(now, op[1], op[2])
            elif op[0] == "release":
                await state.release("k", "m", op[1])
                ledger.released(now, op[1])
            elif op[0] == "learn":
                _, requests, tokens, limit_requests, limit_tokens, since = op
                info = Info(requests, tokens, limit_requests, limit_tokens)
                await state.learn(
                    "k", "m", info, since=since, charged_tokens=50.0, charged_requests=1.0
                )
            elif op[0] == "cool_down":
                await state.cool_down("k", "m", op[1])
            elif op[0] == "start":
                mark = state.mark("k", "m")
                await state.started("k", "m", mark, now - op[1])
            ledger.saw(pair)
        assert_no_window_overruns(ledger)

    _on_virtual_time(body)
