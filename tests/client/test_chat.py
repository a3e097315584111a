"""chat() end to end against the simulated provider, on virtual time."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from maxllm_gate import (
    BadRequestError,
    ConfigError,
    KeyConfig,
    NoKeyAvailableError,
    QueueFullError,
    RequestTimeoutError,
    ShutdownError,
    SimulatedProvider,
    TransientError,
    ValidationError,
    maxllm_gate,
)
from tests.support import MODEL, make_key


@pytest.mark.anyio
async def test_chat_returns_a_complete_response() -> None:
    provider = SimulatedProvider(latency=0.25, completion_tokens=5)
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=provider) as client:
        response = await client.chat(MODEL, "Hello!", max_tokens=10, temperature=0.0)
    assert response.content == "lorem " * 5
    assert response.key_used == "k1"
    assert response.model == MODEL
    assert response.usage is not None and response.usage["completion_tokens"] == 5
    assert response.usage.total_tokens == response.usage.prompt_tokens + 5
    assert response.finish_reason == "stop"
    assert response.attempts == 1
    assert response.llm_latency == pytest.approx(0.25)
    assert response.latency == pytest.approx(0.25)
    assert response.queue_time == 0.0


@pytest.mark.anyio
async def test_temperature_zero_and_max_tokens_reach_the_provider_exactly() -> None:
    seen: list[dict[str, object]] = []
    defaults: list[frozenset[str]] = []

    def record(call: object) -> int:
        seen.append(dict(call.params))  # type: ignore[attr-defined]
        defaults.append(call.defaults)  # type: ignore[attr-defined]
        return 1

    provider = SimulatedProvider(completion_tokens=record)
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=provider) as client:
        await client.chat(MODEL, "hi", temperature=0.0, max_tokens=7, top_p=0.5)
        await client.chat(MODEL, "hi")
        await client.chat(MODEL, "hi", temperature=0.7)
    assert seen[0] == {"temperature": 0.0, "max_tokens": 7, "top_p": 0.5}
    assert seen[1] == {"temperature": 0.7, "max_tokens": 1024}
    # What the config filled in, which a transport may leave out for a model that
    # refuses it (reasoning models take no temperature but 1); never what was asked for.
    assert defaults == [frozenset(), {"temperature", "max_tokens"}, {"max_tokens"}]


@pytest.mark.anyio
async def test_without_send_defaults_only_what_was_given_reaches_the_provider() -> None:
    seen: list[dict[str, object]] = []
    defaults: list[frozenset[str]] = []

    def record(call: object) -> int:
        seen.append(dict(call.params))  # type: ignore[attr-defined]
        defaults.append(call.defaults)  # type: ignore[attr-defined]
        return 1

    provider = SimulatedProvider(completion_tokens=record)
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=provider) as client:
        await client.chat(MODEL, "hi", send_defaults=False)
        await client.chat(MODEL, "hi", temperature=0.0, send_defaults=False, seed=3)
        async with await client.stream_chunks(MODEL, "hi", send_defaults=False) as stream:
            assert [chunk async for chunk in stream]
    assert seen == [{}, {"temperature": 0.0, "seed": 3}, {}]
    assert defaults == [frozenset()] * 3


@pytest.mark.anyio
async def test_when_every_key_is_full_requests_wait_instead_of_failing() -> None:
    provider = SimulatedProvider(latency=0.0)
    async with maxllm_gate(keys=[make_key("k1", 60, 100_000)], provider=provider) as client:
        start = anyio.current_time()
        done: list[float] = []

        async def one() -> None:
            await client.chat(MODEL, "hi", max_tokens=10)
            done.append(anyio.current_time() - start)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
    # 60 RPM = 1 per second; as each one empties the 1-request bucket, each is admitted
    # admission_margin (the allowance for network jitter) after the one before fits.
    step = 1.0 + client.config.admission_margin
    assert sorted(done) == pytest.approx([i * step for i in range(5)], abs=1e-3)
    assert provider.rate_limited == 0


@pytest.mark.anyio
async def test_a_provider_with_lower_real_limits_is_learned_from_its_headers() -> None:
    provider = SimulatedProvider(limits={"k1": {MODEL: (30, 100_000)}})  # configured 120 RPM
    async with maxllm_gate(keys=[make_key("k1", 120, 100_000)], provider=provider) as client:
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(client.chat, MODEL, "hi")
        elapsed = anyio.current_time() - start
        snapshot = client.capacity()["keys"]["k1"]["models"][MODEL]
    assert provider.rate_limited <= 1  # at most the first burst, before any header came
    assert snapshot["rpm_limit"] == 120  # configured; the bucket itself runs at 30
    assert elapsed == pytest.approx(9 * 2.0, abs=0.5)  # 30 RPM: one every 2 s


@pytest.mark.anyio
async def test_lower_real_limits_without_headers_cause_429s_the_caller_never_sees() -> None:
    provider = SimulatedProvider(limits={"k1": {MODEL: (30, 100_000)}}, send_headers=False)
    async with maxllm_gate(keys=[make_key("k1", 120, 100_000)], provider=provider) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(client.chat, MODEL, "hi")
        status = client.status()
    assert provider.rate_limited > 0
    assert provider.accepted == 10
    assert status["keys"]["k1"]["successes"] == 10
    assert status["keys"]["k1"]["rate_limited"] == provider.rate_limited


@pytest.mark.anyio
async def test_transient_errors_are_retried_with_backoff_and_counted_in_attempts() -> None:
    provider = SimulatedProvider()
    provider.inject(TransientError("bad gateway", status_code=502), times=2)
    async with maxllm_gate(
        keys=[make_key("k1", 600, 100_000)], provider=provider, retry_base_delay=1.0
    ) as client:
        start = anyio.current_time()
        response = await client.chat(MODEL, "hi")
        elapsed = anyio.current_time() - start
    assert response.attempts == 3
    assert elapsed <= 1.0 + 2.0  # full jitter: at most base, then 2 * base


@pytest.mark.anyio
async def test_transient_errors_fail_after_max_retries() -> None:
    provider = SimulatedProvider()
    provider.inject(TransientError("unavailable", status_code=503), times=10)
    async with maxllm_gate(
        keys=[make_key("k1", 600, 100_000)], provider=provider, max_retries=2
    ) as client:
        with pytest.raises(TransientError) as info:
            await client.chat(MODEL, "hi")
    assert info.value.status_code == 503
    assert info.value.key_id == "k1"
    assert provider.stats["k1"].faults == 3


@pytest.mark.anyio
async def test_a_bad_request_is_raised_at_once_without_retrying() -> None:
    provider = SimulatedProvider()
    provider.inject(BadRequestError("context too long", status_code=400))
    async with maxllm_gate(keys=[make_key("k1", 600, 100_000)], provider=provider) as client:
        with pytest.raises(BadRequestError):
            await client.chat(MODEL, "hi")
        assert (await client.chat(MODEL, "hi")).attempts == 1
    assert provider.stats["k1"].calls == 2


@pytest.mark.anyio
async def test_a_revoked_key_is_disabled_and_its_traffic_rerouted() -> None:
    provider = SimulatedProvider()
    provider.revoke("k1")
    keys = [make_key("k1", 600, 100_000), make_key("k2", 600, 100_000)]
    async with maxllm_gate(keys=keys, provider=provider) as client:
        responses = [await client.chat(MODEL, "hi") for _ in range(5)]
        status = client.status()
    assert {r.key_used for r in responses} == {"k2"}
    assert status["keys"]["k1"]["enabled"] is False
    assert "AuthenticationError" in status["keys"]["k1"]["disabled_reason"]


@pytest.mark.anyio
async def test_when_every_key_of_a_model_is_revoked_waiting_callers_get_a_clear_error() -> None:
    provider = SimulatedProvider()
    provider.revoke("k1")
    provider.revoke("k2")
    keys = [make_key("k1", 60, 100_000), make_key("k2", 60, 100_000)]
    async with maxllm_gate(keys=keys, provider=provider) as client:
        with anyio.fail_after(60):
            outcomes = []

            async def one() -> None:
                try:
                    await client.chat(MODEL, "hi")
                except NoKeyAvailableError as exc:
                    outcomes.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(one)
        with pytest.raises(NoKeyAvailableError, match="disabled"):
            await client.chat(MODEL, "hi")
    assert len(outcomes) == 6


@pytest.mark.anyio
async def test_an_unknown_model_is_refused_at_once() -> None:
    async with maxllm_gate(
        keys=[make_key("k1", 60, 10_000)], provider=SimulatedProvider()
    ) as client:
        with pytest.raises(NoKeyAvailableError, match="no configured key serves model 'gpt-9'"):
            await client.chat("gpt-9", "hi")


@pytest.mark.anyio
async def test_invalid_input_is_refused_before_anything_is_queued() -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=provider) as client:
        with pytest.raises(ValidationError, match="temperature"):
            await client.chat(MODEL, "hi", temperature=3.0)
        with pytest.raises(ValidationError, match="priority"):
            await client.chat(MODEL, "hi", priority="urgent")
        with pytest.raises(ValueError):
            await client.chat(MODEL, "   ")
        assert client.status()["queued"] == 0
    assert provider.stats == {}


@pytest.mark.anyio
async def test_a_full_queue_refuses_new_requests_with_queue_full_error() -> None:
    provider = SimulatedProvider()
    async with (
        maxllm_gate(
            keys=[make_key("k1", 1, 100_000)], provider=provider, max_queue_size=3
        ) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(client.chat, MODEL, "takes the one request of burst")
        await anyio.sleep(0.1)
        for _ in range(3):
            tg.start_soon(client.chat, MODEL, "waits")
        await anyio.sleep(0.1)
        assert client.status()["queued"] == 3
        with pytest.raises(QueueFullError, match="max_queue_size=3"):
            await client.chat(MODEL, "one too many")
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_request_that_cannot_start_before_its_timeout_fails_at_once() -> None:
    async with maxllm_gate(
        keys=[make_key("k1", 1, 100_000)], provider=SimulatedProvider()
    ) as client:
        await client.chat(MODEL, "takes the only slot for a minute")
        start = anyio.current_time()
        with pytest.raises(RequestTimeoutError, match=r"earliest any key .* is in 60"):
            await client.chat(MODEL, "hi", timeout=5.0)
        assert anyio.current_time() == start
        assert client.status()["queued"] == 0
        assert client.status()["outstanding"] == 0


@pytest.mark.anyio
async def test_a_request_timeout_while_deferred_raises_and_leaves_the_queue() -> None:
    # A concurrency cap frees up when a call ends, which no one can foresee: it waits.
    provider = SimulatedProvider(latency=60.0)
    async with maxllm_gate(
        keys=[make_key("k1", 600, 100_000, max_concurrency=1)], provider=provider
    ) as client:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.chat(MODEL, "holds the only slot for a minute"))
            await anyio.sleep(0.01)
            start = anyio.current_time()
            with pytest.raises(RequestTimeoutError, match="while queued"):
                await client.chat(MODEL, "hi", timeout=5.0)
            assert anyio.current_time() - start == pytest.approx(5.0)
            assert client.status()["queued"] == 0
        assert client.status()["outstanding"] == 0


@pytest.mark.anyio
async def test_a_slow_call_times_out_after_call_timeout_and_is_retried() -> None:
    calls = []

    def latency(call: object) -> float:
        calls.append(call)
        return 100.0 if len(calls) == 1 else 0.5

    provider = SimulatedProvider(latency=latency)
    async with maxllm_gate(
        keys=[make_key("k1", 600, 100_000)], provider=provider, call_timeout=10.0
    ) as client:
        start = anyio.current_time()
        response = await client.chat(MODEL, "hi")
    assert response.attempts == 2
    assert 10.5 <= anyio.current_time() - start <= 12.0


@pytest.mark.anyio
async def test_without_async_with_the_client_starts_on_first_use_and_stops_on_shutdown() -> None:
    client = maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=SimulatedProvider())
    assert (await client.chat(MODEL, "hi")).key_used == "k1"
    await client.shutdown(timeout=5)
    with pytest.raises(ShutdownError, match="shut down"):
        await client.chat(MODEL, "hi")
    await client.shutdown()  # idempotent


class _OneHost:
    """Stands in for ``HostTask``: fails a second actor host instead of starting it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import maxllm_gate.client as client_module

        self.started = 0
        real = client_module.HostTask
        outer = self

        class Host(real):  # type: ignore[misc, valid-type]
            async def start(self, body: Any) -> None:
                outer.started += 1
                if outer.started > 1:
                    raise AssertionError("a second actor host was started")
                await super().start(body)

        monkeypatch.setattr(client_module, "HostTask", Host)


@pytest.mark.anyio
async def test_concurrent_first_requests_start_the_client_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each first request used to start its own actor host on the one supervisor: under
    # trio that corrupted the nursery stack, under asyncio all but one outlived shutdown.
    hosts = _OneHost(monkeypatch)
    provider = SimulatedProvider(latency=0.5)
    client = maxllm_gate(keys=[make_key("k1", 600, 100_000)], provider=provider)
    with anyio.fail_after(60):
        try:
            async with anyio.create_task_group() as tg:
                for i in range(5):
                    tg.start_soon(client.chat, MODEL, f"first {i}")
        finally:
            await client.shutdown(timeout=5)
    assert hosts.started == 1
    assert provider.accepted == 5


@pytest.mark.anyio
async def test_a_request_made_while_async_with_starts_waits_for_that_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = _OneHost(monkeypatch)
    client = maxllm_gate(keys=[make_key("k1", 600, 100_000)], provider=SimulatedProvider())
    answers: list[str] = []

    async def early_request() -> None:
        answers.append((await client.chat(MODEL, "early")).key_used)

    async with anyio.create_task_group() as tg:
        warm_up = client._warm_up

        async def warm_up_slowly(keys: Any) -> None:  # the request comes while it starts
            tg.start_soon(early_request)
            await anyio.sleep(0.5)
            await warm_up(keys)

        monkeypatch.setattr(client, "_warm_up", warm_up_slowly)
        async with client:
            await anyio.sleep(1)
    assert answers == ["k1"]
    assert hosts.started == 0


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", ["5", float("nan"), float("inf"), -1.0, 0, True])
async def test_a_bad_timeout_is_refused_before_anything_is_queued(timeout: object) -> None:
    provider = SimulatedProvider()
    async with maxllm_gate(keys=[make_key("k1", 600, 100_000)], provider=provider) as client:
        with pytest.raises(ValidationError, match="timeout: must be a number of seconds > 0"):
            await client.chat(MODEL, "hi", timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="timeout"):
            await client.stream_chunks(MODEL, "hi", timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="timeout"):
            async for _ in client.chat_stream(MODEL, "hi", timeout=timeout):  # type: ignore[arg-type]
                pass
        await anyio.sleep(10)
        assert client.status()["queued"] == 0
    # Nothing was sent: a job queued before the error used to run with no one waiting.
    assert provider.stats == {} or provider.stats["k1"].calls == 0


@pytest.mark.anyio
async def test_a_key_added_before_the_first_request_starts_the_client() -> None:
    # It raised ShutdownError("the client is not running"): a client made with no keys,
    # to add them at runtime, could not be given its first one.
    client = maxllm_gate(keys=[], provider=SimulatedProvider())
    assert await client.add_key(make_key("k1", 60, 10_000)) == "k1"
    assert (await client.chat(MODEL, "hi")).key_used == "k1"
    await client.shutdown()
    with pytest.raises(ShutdownError):
        await client.add_key(make_key("k2", 60, 10_000))


@pytest.mark.anyio
async def test_a_client_runs_once() -> None:
    async with maxllm_gate(keys=[make_key("k1", 60, 10_000)], provider=SimulatedProvider()) as c:
        await c.chat(MODEL, "hi")
    with pytest.raises(ShutdownError):
        async with c:
            pass


def test_a_key_its_transport_cannot_reach_is_refused_when_the_client_is_made() -> None:
    key = KeyConfig(
        api_key="sk-unreachable-0000",
        provider="no-such-provider",
        transport="openai_compat",
        models={MODEL: {"rpm_limit": 60, "tpm_limit": 1000}},
    )
    with pytest.raises(ConfigError, match="no known OpenAI-compatible endpoint; set api_base"):
        maxllm_gate(keys=[key])


@pytest.mark.anyio
async def test_a_first_request_loses_no_virtual_time_to_loading_its_tokenizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from maxllm_gate import tokens

    # As in a fresh process: the encoding is loaded, in a thread, by the first client.
    monkeypatch.setattr(tokens, "_loaded", {})
    key = KeyConfig(
        api_key="sk-test-tokenizer-1",
        provider="openai",
        models={"gpt-4o-mini": {"rpm_limit": 60, "tpm_limit": 100_000}},
    )
    added = KeyConfig(
        api_key="sk-test-tokenizer-2",
        provider="openai",
        models={"gpt-4-turbo": {"rpm_limit": 60, "tpm_limit": 100_000}},
    )
    async with maxllm_gate(keys=[key], provider=SimulatedProvider(latency=0.5)) as client:
        await client.add_key(added)  # a model (and encoding) the client had not loaded
        for model in ("gpt-4o-mini", "gpt-4-turbo"):
            start = anyio.current_time()
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.sleep, 30)  # a timer elsewhere, for the clock to jump to
                response = await client.chat(model, "hi")
                tg.cancel_scope.cancel()
            # Loaded at start (or by add_key), not on this request's path: no jump.
            assert anyio.current_time() - start == pytest.approx(0.5)
            assert response.queue_time == 0.0
