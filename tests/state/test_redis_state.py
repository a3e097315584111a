"""RedisState and HybridRateLimiter against a real redis-server, on the real clock."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from importlib import resources

import anyio
import coredis
import pytest

from maxllm_gate import maxllm_gate
from maxllm_gate.errors import GateError
from maxllm_gate.limits import BucketPair, CellSpec, Cost, LimitSpec
from maxllm_gate.providers.simulated import SimulatedProvider
from maxllm_gate.state.hybrid import HybridRateLimiter
from maxllm_gate.state.redis import RedisState
from tests.state.conftest import RedisServer, free_port, raw_redis
from tests.support import MODEL, make_key

pytestmark = pytest.mark.anyio

KEY = "k1"
SLOW = LimitSpec(rpm_limit=60, tpm_limit=60_000, rpm_capacity=2, tpm_capacity=1000)
ROOMY = LimitSpec(rpm_limit=6000, tpm_limit=600_000, rpm_capacity=100, tpm_capacity=10_000)


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, object]]]:
    """The library's events, as dicts, from a handler on its standard logger."""
    events: list[dict[str, object]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            fields = getattr(record, "fields", {})
            events.append({"log_level": record.levelname.lower(), "event": record.event, **fields})  # type: ignore[attr-defined]

    handler = Keep(logging.WARNING)
    logger = logging.getLogger("maxllm_gate")
    logger.addHandler(handler)
    try:
        yield events
    finally:
        logger.removeHandler(handler)


def redis_warnings(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["log_level"] == "warning" and "Redis" in str(e["event"])]


def test_the_lua_scripts_ship_inside_the_package() -> None:
    folder = resources.files("maxllm_gate.state") / "lua"
    names = {entry.name for entry in folder.iterdir()}
    expected = {"reserve", "settle", "started", "sync", "stats", "peek"}
    assert {f"{op}.lua" for op in expected} | {"_cells.lua"} <= names


async def test_keys_are_hash_tagged_expire_and_hold_no_api_key(
    any_redis_url: str, prefix: str
) -> None:
    key = make_key(KEY, 60_000, 10_000_000)  # never full: every request fits at once
    state = RedisState(any_redis_url, prefix=prefix, ttl=600)
    provider = SimulatedProvider(completion_tokens=5)
    async with state, maxllm_gate(keys=[key], provider=provider, state=state) as client:
        for _ in range(20):
            await client.chat(MODEL, "Hello there!", max_tokens=20)
    async with raw_redis(any_redis_url) as raw:
        keys = [k async for k in raw.scan_iter(match=f"{prefix}:*")]
        assert keys == [f"{prefix}:{{{KEY}}}:{MODEL}"]
        assert 0 < await raw.pttl(keys[0]) <= 600_000
        stored = await raw.hgetall(keys[0])
    assert key.api_key not in repr(keys) + repr(stored)
    assert float(stored["ar"]) == 20  # twenty requests admitted
    # Round trips per request: one reserve; then, to settle, one learn (the
    # headers): an "admission" provider keeps its charge, so nothing is released;
    # ``started`` only for a call that left over a millisecond after its admission
    # from full.
    print(f"\nRedis round trips for 20 requests: {dict(state.calls)}")
    assert state.calls["reserve"] == state.calls["settle"] == 20  # admission, then its report
    assert state.calls["started"] <= 2


async def test_round_trips_when_requests_queue(redis_url: str, prefix: str) -> None:
    key = make_key(KEY, 600, 10_000_000)  # 10 requests a second, a burst of 10
    state = RedisState(redis_url, prefix=prefix)
    provider = SimulatedProvider(latency=0.05, completion_tokens=5)
    async with (
        state,
        maxllm_gate(keys=[key], provider=provider, state=state) as client,
        anyio.create_task_group() as tasks,
    ):
        for _ in range(30):
            tasks.start_soon(lambda: client.chat(MODEL, "Hello there!", max_tokens=20))
    print(f"\nRedis round trips for 30 queued requests: {dict(state.calls)}")
    assert provider.rate_limited == 0
    # The dispatcher retries a refused reservation once per wake-up, not per request.
    assert state.calls["reserve"] <= 30 + 25


async def test_processes_sharing_a_key_never_over_admit_together(
    any_redis_url: str, prefix: str
) -> None:
    spec = LimitSpec(rpm_limit=60, tpm_limit=100_000, rpm_capacity=5, tpm_capacity=10_000)
    admitted: list[float] = []
    duration = 3.0

    async def hammer(state: RedisState, deadline: float) -> None:
        while anyio.current_time() < deadline:
            wait = await state.reserve(KEY, MODEL, Cost(tokens=1))
            if wait == 0.0:
                admitted.append(anyio.current_time())
            else:
                await anyio.sleep(min(wait, max(0.0, deadline - anyio.current_time())))

    async with contextlib.AsyncExitStack() as stack:
        states = [
            await stack.enter_async_context(RedisState(any_redis_url, prefix=prefix))
            for _ in range(3)
        ]
        for state in states:
            state.register(KEY, MODEL, spec)
        start = anyio.current_time()
        async with anyio.create_task_group() as tasks:
            for state in states:
                for _ in range(4):
                    tasks.start_soon(hammer, state, start + duration)
        elapsed = anyio.current_time() - start
    # At most the burst plus one request a second, between all three "processes".
    assert len(admitted) <= 5 + int(elapsed) + 1
    assert len(admitted) >= 5 + int(duration) - 2  # and they did not starve each other


async def test_refresh_reads_what_other_processes_did_and_writes_nothing(
    redis_url: str, prefix: str
) -> None:
    async with (
        RedisState(redis_url, prefix=prefix, cold_start=0) as one,
        RedisState(redis_url, prefix=prefix, cold_start=0) as two,
    ):
        for state in (one, two):
            state.register(KEY, MODEL, SLOW)
        raw = two._client
        await two.refresh()  # a pair no process used: read, not created
        assert await raw.exists([two.redis_key(KEY, MODEL)]) == 0
        assert await one.reserve(KEY, MODEL, Cost(tokens=900)) == 0.0
        stored = await raw.hgetall(two.redis_key(KEY, MODEL))
        assert two.snapshot(KEY, MODEL).tokens_available == 1000  # its own last view
        await two.refresh()
        assert two.snapshot(KEY, MODEL).tokens_available < 200  # what one spent
        assert await raw.hgetall(two.redis_key(KEY, MODEL)) == stored


async def test_the_servers_clock_decides_not_the_clients(
    redis_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with RedisState(redis_url, prefix=prefix, jitter=0.0, cold_start=0.0) as state:
        state.register(KEY, MODEL, SLOW)
        assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
        wait = await state.reserve(KEY, MODEL, Cost(tokens=1))
        assert wait == pytest.approx(0.05, abs=0.03)
        await anyio.sleep(wait)
        assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0  # now empty: 1 s a request
        real_loop_clock: Callable[[], float] = anyio.current_time
        real_wall_clock = time.time
        for skew in (3600.0, -3600.0):
            # A process whose clocks are an hour off sees the same bucket.
            monkeypatch.setattr(anyio, "current_time", lambda s=skew: real_loop_clock() + s)
            monkeypatch.setattr(time, "time", lambda s=skew: real_wall_clock() + s)
            async with RedisState(redis_url, prefix=prefix, jitter=0.0, cold_start=0.0) as skewed:
                skewed.register(KEY, MODEL, SLOW)
                wait = await skewed.reserve(KEY, MODEL, Cost(tokens=1))
                assert 0.5 < wait < 1.1
                assert skewed.snapshot(KEY, MODEL).requests_available < 0.5
            monkeypatch.undo()


async def test_hybrid_uses_redis_when_it_answers(redis_url: str, prefix: str) -> None:
    async with HybridRateLimiter(redis_url, prefix=prefix) as limiter:
        assert limiter.is_distributed
        assert limiter.redis.is_cluster is False
        limiter.register(KEY, MODEL, SLOW)
        assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
        assert limiter.redis.calls["reserve"] == 1


async def test_hybrid_falls_back_to_memory_when_redis_is_down_at_start() -> None:
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    with captured_logs() as logs:
        async with HybridRateLimiter(url, reconnect_interval=0.05) as limiter:
            assert not limiter.is_distributed
            limiter.register(KEY, MODEL, SLOW)
            assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
            assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) > 0.0
            await anyio.sleep(0.3)  # a few reconnection attempts: still no new warning
    [warning] = redis_warnings(logs)
    assert warning["url"] == url
    assert limiter.redis.calls["reserve"] == 0


async def test_hybrid_without_fallback_raises_gate_error_when_redis_is_down() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}"
    with pytest.raises(GateError, match="unreachable") as caught:
        async with HybridRateLimiter(url, fallback_to_memory=False):
            pytest.fail("must not start")
    assert "hunter2" not in str(caught.value)
    limiter = HybridRateLimiter(url, fallback_to_memory=False)
    with pytest.raises(GateError, match="unreachable"):
        await limiter.initialize()


async def test_hybrid_survives_redis_dying_and_comes_back_to_it(
    redis_server: RedisServer, prefix: str
) -> None:
    four = LimitSpec(rpm_limit=60, tpm_limit=60_000, rpm_capacity=4, tpm_capacity=1000)
    with captured_logs() as logs:
        async with HybridRateLimiter(
            redis_server.url, prefix=prefix, reconnect_interval=0.05
        ) as limiter:
            limiter.register(KEY, MODEL, four)
            assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
            assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
            assert limiter.is_distributed

            redis_server.stop()
            assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0  # on memory now
            assert not limiter.is_distributed
            # Memory started from the last state seen in Redis (2 of 4 used), not from
            # full: it refuses the 4th (the margin keeps one unit back), where a full
            # bucket would admit it.
            assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) > 0.0
            await anyio.sleep(1.1)
            assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
            assert len(redis_warnings(logs)) == 1

            redis_server.start()  # same port, empty
            with anyio.fail_after(5):
                while not limiter.is_distributed:  # noqa: ASYNC110 (the reconnect loop's flag)
                    await anyio.sleep(0.02)
            reserves = limiter.redis.calls["reserve"]
            assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
            assert limiter.redis.calls["reserve"] == reserves + 1
    async with coredis.Redis.from_url(redis_server.url, decode_responses=True) as raw:
        assert await raw.exists([limiter.redis.redis_key(KEY, MODEL)]) == 1
    assert [e["event"] for e in redis_warnings(logs)] == [
        "Redis unreachable or failing: limits are now per process (memory), not shared",
        "Redis is back: limits are shared again",
    ]


async def test_hybrid_without_fallback_raises_while_redis_is_down_then_recovers(
    redis_server: RedisServer, prefix: str
) -> None:
    async with HybridRateLimiter(redis_server.url, False, prefix=prefix) as limiter:
        limiter.register(KEY, MODEL, ROOMY)
        assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
        redis_server.stop()
        with pytest.raises(GateError, match="unreachable"):
            await limiter.reserve(KEY, MODEL, Cost(tokens=1))
        redis_server.start()
        assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0  # a fresh bucket
        assert limiter.is_distributed


async def test_a_fresh_pair_starts_without_cold_start_seconds_of_refill(
    any_redis_url: str, prefix: str
) -> None:
    ten = LimitSpec(rpm_limit=60, tpm_limit=60_000, rpm_capacity=10, tpm_capacity=10_000)
    async with RedisState(any_redis_url, prefix=prefix, jitter=0.0, margin=0.0) as state:
        state.register(KEY, MODEL, ten)
        # 0.5 s of refill is half a request: 9 of the 10 fit at once, the 10th half a second later.
        waits = [await state.reserve(KEY, MODEL, Cost(tokens=1)) for _ in range(10)]
        assert waits[:9] == [0.0] * 9
        assert waits[9] == pytest.approx(0.5, abs=0.05)
    # A flush (or a restart) loses the state: the pair is fresh again, and the
    # cold start stands for the calls still in flight.
    async with raw_redis(any_redis_url) as raw:
        await raw.delete([state.redis_key(KEY, MODEL)])
    async with RedisState(any_redis_url, prefix=prefix, jitter=0.0, margin=0.0) as state:
        state.register(KEY, MODEL, ten)
        waits = [await state.reserve(KEY, MODEL, Cost(tokens=1)) for _ in range(10)]
        assert waits[:9] == [0.0] * 9 and waits[9] > 0.4


async def test_back_on_redis_the_calls_admitted_on_memory_stay_counted(
    redis_server: RedisServer, prefix: str
) -> None:
    four = LimitSpec(rpm_limit=6, tpm_limit=60_000, rpm_capacity=4, tpm_capacity=1000)
    async with HybridRateLimiter(
        redis_server.url, prefix=prefix, reconnect_interval=0.05, cold_start=0.0
    ) as limiter:
        limiter.register(KEY, MODEL, four)
        assert await limiter.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0
        redis_server.stop()
        # On memory, starting from Redis's last state: 2 more of the 4 (the margin holds the last).
        assert [await limiter.reserve(KEY, MODEL, Cost(tokens=1)) for _ in range(2)] == [0.0] * 2
        assert not limiter.is_distributed
        redis_server.start()  # empty: a full bucket, were it not for the merge
        with anyio.fail_after(5):
            while not limiter.is_distributed:  # noqa: ASYNC110 (the reconnect loop's flag)
                await anyio.sleep(0.02)
        assert limiter.redis.calls["sync"] >= 1
        # Another process, sharing Redis, sees the 3 requests taken: one fits, not four.
        async with RedisState(redis_server.url, prefix=prefix, jitter=0.0, margin=0.0) as other:
            other.register(KEY, MODEL, four)
            waits = [await other.reserve(KEY, MODEL, Cost(tokens=1)) for _ in range(2)]
        assert waits[0] == 0.0 and waits[1] > 5.0  # 10 s a request at 6 RPM


async def test_a_heartbeat_notices_redis_dying_with_no_traffic(
    redis_server: RedisServer, prefix: str
) -> None:
    async with HybridRateLimiter(
        redis_server.url, prefix=prefix, reconnect_interval=0.05, heartbeat_interval=0.1
    ) as limiter:
        limiter.register(KEY, MODEL, ROOMY)
        assert limiter.is_distributed
        redis_server.stop()
        with anyio.fail_after(3):
            while limiter.is_distributed:  # noqa: ASYNC110 (the heartbeat's flag)
                await anyio.sleep(0.02)
        redis_server.start()
        with anyio.fail_after(5):
            while not limiter.is_distributed:  # noqa: ASYNC110 (the reconnect loop's flag)
                await anyio.sleep(0.02)


async def test_a_fresh_pair_smaller_than_its_cold_start_still_admits(
    redis_url: str, prefix: str
) -> None:
    two = LimitSpec.from_limits(120, 1_000_000, 1.0)  # two requests, refilled in one second
    async with RedisState(redis_url, prefix=prefix, jitter=0.0) as state:
        state.register(KEY, MODEL, two)
        wait = await state.reserve(KEY, MODEL, Cost(tokens=1))
        assert 0.0 < wait < 0.1  # the cold start is remembered, not restarted at each try
        await anyio.sleep(wait)
        assert await state.reserve(KEY, MODEL, Cost(tokens=1)) == 0.0


async def test_processes_share_latency_and_error_statistics(
    any_redis_url: str, prefix: str
) -> None:
    key = make_key(KEY, 60_000, 10_000_000)
    limiters = [
        HybridRateLimiter(any_redis_url, prefix=prefix, stats_interval=0.1) for _ in range(2)
    ]
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for limiter, latency in zip(limiters, (0.1, 0.3), strict=True):
            await stack.enter_async_context(limiter)
            provider = SimulatedProvider(latency=latency, completion_tokens=5)
            client = maxllm_gate(keys=[key], provider=provider, state=limiter)
            clients.append(await stack.enter_async_context(client))
        for client in clients:
            for _ in range(3):
                await client.chat(MODEL, "Hello there!", max_tokens=20)
        await anyio.sleep(0.5)  # a few reports each
        views = [client.status()["keys"][KEY]["shared"] for client in clients]
    for shared in views:
        assert shared["calls"] == shared["successes"] == 6  # both processes' calls
        assert shared["processes"] == 2
        # Each process's average is pulled to the mean of all: between its 0.1 s and 0.3 s.
        assert 0.1 < shared["latency_ewma"] < 0.3
        assert shared["error_rate"] == 0.0
    assert views[0]["latency_ewma"] == pytest.approx(views[1]["latency_ewma"], abs=0.02)


async def test_statistics_ride_on_settlements_while_calls_flow(redis_url: str, prefix: str) -> None:
    key = make_key(KEY, 60_000, 10_000_000)
    limiter = HybridRateLimiter(redis_url, prefix=prefix, stats_interval=0.2)
    provider = SimulatedProvider(latency=0.05, completion_tokens=5)
    async with limiter, maxllm_gate(keys=[key], provider=provider, state=limiter) as client:
        for _ in range(30):  # about 1.5 s: the statistics are due some 7 times
            await client.chat(MODEL, "Hello there!", max_tokens=20)
        shared = client.status()["keys"][KEY]["shared"]
    assert limiter.redis.calls["settle"] == 30
    # Each time they were due a settlement carried them; at most a race with the
    # timer (a report due while no call ended) costs a round trip of their own.
    assert limiter.redis.calls["stats"] <= 2
    assert 25 <= shared["calls"] <= 30 and shared["processes"] == 1


async def test_a_key_one_process_finds_revoked_is_disabled_in_all(
    redis_url: str, prefix: str
) -> None:
    keys = [make_key(KEY, 60_000, 10_000_000), make_key("k2", 60_000, 10_000_000)]
    limiters = [HybridRateLimiter(redis_url, prefix=prefix, stats_interval=0.1) for _ in range(2)]
    providers = [SimulatedProvider(completion_tokens=5) for _ in range(2)]
    providers[0].revoke(KEY)  # only the first process has met the 401 yet
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for limiter, provider in zip(limiters, providers, strict=True):
            await stack.enter_async_context(limiter)
            client = maxllm_gate(keys=keys, provider=provider, state=limiter)
            clients.append(await stack.enter_async_context(client))
        for _ in range(4):  # one of them meets KEY and its 401, then goes to k2
            await clients[0].chat(MODEL, "Hello there!", max_tokens=20)
        assert not clients[0].status()["keys"][KEY]["enabled"]
        await anyio.sleep(0.5)  # a few reports each
        other = clients[1].status()["keys"][KEY]
        assert not other["enabled"]
        assert other["disabled_reason"].startswith("disabled by another process: ")
        assert clients[1].status()["keys"]["k2"]["enabled"]
    # The hash names the key by its secret's fingerprint, never by the secret.
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as raw:
        fields = await raw.hgetall(f"{prefix}:{{{KEY}}}:stats")
    assert any(f.startswith("disabled:") for f in fields)
    assert not any(keys[0].api_key in f or keys[0].api_key in v for f, v in fields.items())


def test_every_script_touches_only_the_keys_of_one_key_id() -> None:
    """On a Cluster a script may touch only the keys it is given, all in one slot: a
    key id's pair hash (KEYS[1]) and its statistics hash (KEYS[2]), both tagged with
    the key id (the client routes the call by that tag)."""
    folder = resources.files("maxllm_gate.state") / "lua"
    for entry in folder.iterdir():
        if entry.name.endswith(".lua"):
            source = entry.read_text(encoding="utf-8")
            assert "#KEYS" not in source and "KEYS[3]" not in source, entry.name
    state = RedisState("redis://127.0.0.1:1", prefix="p")
    keys = [state.redis_key("k1", "gpt-4o"), state._stats_key("k1")]
    assert {re.search(r"\{(.*?)\}", key)[1] for key in keys} == {"k1"}  # type: ignore[index]


async def test_a_url_naming_any_cluster_node_shares_keys_on_different_nodes(
    redis_cluster_url: str, prefix: str
) -> None:
    keys = [make_key("k1", 600, 10_000_000), make_key("k2", 600, 10_000_000)]
    limiters = [
        HybridRateLimiter(redis_cluster_url, prefix=prefix, stats_interval=0.1) for _ in range(2)
    ]
    provider = SimulatedProvider(latency=0.01, completion_tokens=5)
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for limiter in limiters:
            await stack.enter_async_context(limiter)
            assert limiter.is_distributed and limiter.redis.is_cluster
            client = maxllm_gate(keys=keys, provider=provider, state=limiter)
            clients.append(await stack.enter_async_context(client))
        async with anyio.create_task_group() as tasks:
            for client in clients:
                for _ in range(30):  # 60 requests on 2 keys of a burst of 10 each: they queue
                    tasks.start_soon(lambda c=client: c.chat(MODEL, "Hello there!", max_tokens=20))
        await anyio.sleep(0.5)  # a few statistics reports each
        views = [client.status()["keys"] for client in clients]
        assert all(limiter.is_distributed for limiter in limiters)
    assert provider.rate_limited == 0
    for view in views:  # both processes see both keys' calls, each kept on its key's node
        assert view["k1"]["shared"]["calls"] + view["k2"]["shared"]["calls"] == 60
    assert all(limiter.redis.calls["reserve"] >= 30 for limiter in limiters)
    held: dict[str, set[str]] = {}  # node -> the keys it holds
    async with raw_redis(redis_cluster_url) as raw:
        assert isinstance(raw, coredis.RedisCluster)
        for node in raw.primaries:
            async with node:
                where = str(node.connection_pool.location)
                held[where] = {k async for k in node.scan_iter(match=f"{prefix}:*")}
    holders = {
        key_id: {node for node, names in held.items() if names & {f"{prefix}:{{{key_id}}}:{MODEL}"}}
        for key_id in ("k1", "k2")
    }
    for node, names in held.items():  # a key's buckets and statistics: one slot, one node
        for key_id in ("k1", "k2"):
            mine = {f"{prefix}:{{{key_id}}}:{MODEL}", f"{prefix}:{{{key_id}}}:stats"}
            assert not names & mine or mine <= names, (node, names)
    assert len(holders["k1"]) == len(holders["k2"]) == 1
    assert holders["k1"] != holders["k2"]
    assert redis_cluster_url.rsplit("/", 1)[-1] not in holders["k1"] | holders["k2"]


async def test_a_cluster_client_given_is_used_as_it_is(redis_cluster_url: str, prefix: str) -> None:
    async with raw_redis(redis_cluster_url) as client:
        assert isinstance(client, coredis.RedisCluster)
        async with RedisState("", prefix=prefix, client=client, jitter=0.0) as state:
            assert state.is_cluster
            for key_id in ("k1", "k2"):
                state.register(key_id, MODEL, SLOW)
                assert await state.reserve(key_id, MODEL, Cost(tokens=1)) == 0.0
                assert await state.reserve(key_id, MODEL, Cost(tokens=1)) > 0.0
        assert (
            await client.exists([state.redis_key("k1", MODEL), state.redis_key("k2", MODEL)]) == 2
        )


async def test_a_merge_keeps_the_debt_of_extra_cells(redis_url: str, prefix: str) -> None:
    spec = LimitSpec(600, 60_000, 100, 10_000, extra=(CellSpec.requests_per_day(5),))
    alone = BucketPair(spec)  # what a process admitted on its own, while Redis was away
    now = anyio.current_time()
    for second in range(5):  # a second apart: float noise on a day-long cell stays below it
        assert alone.reserve(now + second, Cost(tokens=1)) == now + second
    async with RedisState(redis_url, prefix=prefix, cold_start=0.0) as state:
        state.register("k1", "m1", spec)
        await state.merge("k1", "m1", alone)
        assert await state.reserve("k1", "m1", Cost(tokens=1)) > 3600.0
