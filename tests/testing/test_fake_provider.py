"""The fake OpenAI-compatible HTTP provider: wire format, enforcement, faults, serving."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from typing import Any

import anyio
import httpx
import pytest

from maxllm_gate.testing.fake_provider import FakeProvider, format_go_duration, key_fingerprint

pytestmark = pytest.mark.anyio

KEY = "sk-test-key-a"
OTHER = "sk-test-key-b"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello to the fake provider."}]
# The fake's own counts of MESSAGES (see maxllm_gate.testing.provider_limits):
PROMPT = 13  # usage.prompt_tokens: 7 words and marks, 3 for the message, 3 of reply priming
CHARGE = 8  # what its limiter charges for the prompt: 31 characters / 4, rounded up


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    # Real sockets need the real clock: plain backends, not the suite's virtual time.
    return str(request.param)


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, **extra}


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client(fake: FakeProvider, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fake.url, timeout=5.0, **kwargs)


async def post(http: httpx.AsyncClient, key: str = KEY, **extra: Any) -> httpx.Response:
    return await http.post("/chat/completions", json=body(**extra), headers=auth(key))


def sse_events(text: str) -> list[str]:
    events = [block for block in text.split("\n\n") if block]
    assert all(e.startswith("data: ") for e in events)
    return [e.removeprefix("data: ") for e in events]


async def eventually(check: Any, timeout: float = 2.0) -> None:
    """Wait until ``check()`` is true: the server settles a call a moment after a hang-up."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await anyio.sleep(0.01)
    raise AssertionError("never happened")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (1, "1s"),
        (360, "6m0s"),
        (0.12, "120ms"),
        (90.5, "1m30.5s"),
        (8.64, "8.64s"),
        (3600, "1h0m0s"),
        (3723.25, "1h2m3.25s"),
        (0.0015, "1.5ms"),
        (1.5e-6, "1.5µs"),
        (5e-9, "5ns"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert format_go_duration(seconds) == text


async def test_completion_wire_format_and_headers() -> None:
    limits = {KEY: {MODEL: (600.0, 600_000.0)}}  # 1 s buckets: 10 requests, 10 000 tokens
    async with FakeProvider(limits=limits, completion_tokens=16).running() as fake:
        assert fake.url.startswith("http://127.0.0.1:") and fake.url.endswith("/v1")
        max_tokens = 200 - CHARGE  # a cost of 200 tokens refills in exactly 20 ms
        async with client(fake) as http:
            response = await post(http, max_tokens=max_tokens, temperature=0.3)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert set(data) == {"id", "object", "created", "model", "choices", "usage"}
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and abs(data["created"] - time.time()) < 60
    assert data["model"] == MODEL
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "lorem " * 16},
            "finish_reason": "stop",
        }
    ]
    assert data["usage"] == {
        "prompt_tokens": PROMPT,
        "completion_tokens": 16,
        "total_tokens": PROMPT + 16,
    }
    headers = response.headers
    assert headers["x-ratelimit-limit-requests"] == "600"
    assert headers["x-ratelimit-limit-tokens"] == "600000"
    assert headers["x-ratelimit-remaining-requests"] == "9"  # out of 10: the 1 s bucket
    assert headers["x-ratelimit-remaining-tokens"] == str(10_000 - 200)
    assert headers["x-ratelimit-reset-requests"] == "100ms"
    assert headers["x-ratelimit-reset-tokens"] == "20ms"
    stats = fake.stats_for(KEY)
    assert stats["calls"] == stats["accepted"] == 1
    assert stats["prompt_tokens"] == PROMPT and stats["completion_tokens"] == 16
    assert stats["charged_tokens"] == 200
    assert fake.accepted == 1 and fake.rate_limited == 0


async def test_finish_reason_length_and_max_completion_tokens() -> None:
    async with FakeProvider(completion_tokens=16).running() as fake, client(fake) as http:
        capped = await post(http, max_completion_tokens=5)
        unlimited = await post(http)
    assert capped.json()["choices"][0]["finish_reason"] == "length"
    assert capped.json()["usage"]["completion_tokens"] == 5
    assert "x-ratelimit-limit-requests" not in unlimited.headers  # no limits, no headers
    assert unlimited.json()["choices"][0]["finish_reason"] == "stop"


async def test_stream_with_usage() -> None:
    fake = FakeProvider(default_limits=(600, 600_000), completion_tokens=10)
    async with fake.running(), client(fake) as http:
        response = await post(http, stream=True, stream_options={"include_usage": True})
        plain = await post(http, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["x-ratelimit-remaining-requests"] == "9"
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    content, usage = chunks[:-1], chunks[-1]
    assert len(content) == 3  # 4 + 4 + 2 tokens
    assert len({c["id"] for c in chunks}) == 1
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == MODEL
        assert isinstance(chunk["created"], int)
    assert content[0]["choices"][0]["delta"] == {"role": "assistant", "content": "lorem " * 4}
    assert [c["choices"][0]["finish_reason"] for c in content] == [None, None, "stop"]
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == "lorem " * 10
    assert all(c["usage"] is None for c in content)
    assert usage["choices"] == []
    assert usage["usage"] == {
        "prompt_tokens": PROMPT,
        "completion_tokens": 10,
        "total_tokens": PROMPT + 10,
    }
    plain_events = sse_events(plain.text)
    assert plain_events[-1] == "[DONE]"
    assert all("usage" not in json.loads(e) for e in plain_events[:-1])
    assert json.loads(plain_events[-2])["choices"][0]["finish_reason"] == "stop"


async def test_429_when_requests_run_out() -> None:
    limits = {KEY: {MODEL: (60.0, 1_000_000.0)}}  # one request per second, no burst
    async with FakeProvider(limits=limits).running() as fake, client(fake) as http:
        first = await post(http)
        refused = await post(http)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] == "1s"
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert "on requests per min (RPM): Limit 60, Used 1, Requested 1." in error["message"]
    assert refused.headers["retry-after"] == "1"
    assert 500 < int(refused.headers["retry-after-ms"]) <= 1000
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert fake.rate_limited == 1
    assert fake.stats_for(KEY)["rate_limited"] == 1 and fake.stats_for(KEY)["accepted"] == 1


async def test_429_on_tokens_then_retry_after_ms_is_enough() -> None:
    # 1 000 tokens a bucket, refilling one token per millisecond.
    limits = {KEY: {MODEL: (6000.0, 60_000.0)}}
    async with FakeProvider(limits=limits).running() as fake, client(fake) as http:
        first = await post(http, max_tokens=900 - CHARGE)
        refused = await post(http, max_tokens=400 - CHARGE)
        wait_ms = int(refused.headers["retry-after-ms"])
        await anyio.sleep(wait_ms / 1000)
        retried = await post(http, max_tokens=400 - CHARGE)
    assert first.status_code == 200
    left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert left == 100
    assert first.headers["x-ratelimit-reset-tokens"] == "900ms"
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "tokens"
    assert "tokens per min (TPM): Limit 60000" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "1"
    # 300 tokens short at one a millisecond, less what refilled between the two calls.
    assert 0 < wait_ms <= 300
    remaining = int(refused.headers["x-ratelimit-remaining-tokens"])
    assert abs(remaining + wait_ms - 400) <= 1  # nothing was charged
    assert retried.status_code == 200
    assert fake.rate_limited == 1


async def test_charges_characters_and_reports_its_own_usage() -> None:
    english = "Limits keep a shared service fair to each of its customers. " * 20  # 1,200 chars
    messages = [{"role": "user", "content": english}]
    plain = FakeProvider(default_limits=(600, 60_000), burst_window=60)
    scaled = FakeProvider(default_limits=(600, 60_000), burst_window=60, charge_factor=1.3)
    for fake, charged in ((plain, 300 + 200), (scaled, 390 + 200)):
        async with fake.running(), client(fake) as http:
            response = await post(http, messages=messages, max_tokens=200)
        assert response.headers["x-ratelimit-remaining-tokens"] == str(60_000 - charged)
        assert response.json()["usage"]["prompt_tokens"] == 20 * 12 + 6  # not the charge
        assert fake.stats_for(KEY)["charged_tokens"] == charged


async def test_charge_by_the_providers_tokenizer() -> None:
    fake = FakeProvider(default_limits=(600, 60_000), burst_window=60, charge="tokens")
    async with fake.running(), client(fake) as http:
        response = await post(http, max_tokens=100)
    assert response.headers["x-ratelimit-remaining-tokens"] == str(60_000 - PROMPT - 100)


async def test_429_for_a_request_larger_than_the_tpm_limit() -> None:
    fake = FakeProvider(default_limits=(600, 500), burst_window=60)
    async with fake.running(), client(fake) as http:
        refused = await post(http, max_tokens=500)
        fits = await post(http, max_tokens=500 - CHARGE)
    assert refused.status_code == 429
    assert refused.json() == {
        "error": {
            "message": (
                f"Request too large for {MODEL} in organization org-fake on tokens per min "
                f"(TPM): Limit 500, Requested {CHARGE + 500}. The input or output tokens must "
                "be reduced in order to run successfully."
            ),
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert "retry-after" not in refused.headers and "retry-after-ms" not in refused.headers
    assert refused.headers["x-ratelimit-remaining-tokens"] == "500"  # nothing was charged
    assert fits.status_code == 200
    assert fake.rate_limited == 1
    assert fake.stats_for(KEY)["charged_tokens"] == 500


async def test_requests_per_day_headers() -> None:
    fake = FakeProvider(default_limits=(30, 6000), requests_per_day_headers=True)
    async with fake.running(), client(fake) as http:
        response = await post(http, max_tokens=10)
    assert response.headers["x-ratelimit-limit-requests"] == str(30 * 1440)
    assert response.headers["x-ratelimit-remaining-requests"] == str(30 * 1440 - 1)
    assert response.headers["x-ratelimit-reset-requests"] == "2s"
    assert response.headers["x-ratelimit-limit-tokens"] == "6000"  # tokens stay per minute


async def test_a_daily_request_cap_is_enforced_and_named() -> None:
    fake = FakeProvider(default_limits=(600, 600_000), requests_per_day=5)
    async with fake.running(), client(fake) as http:
        answers = [await post(http, max_tokens=10) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    refused = answers[-1]
    message = refused.json()["error"]["message"]
    assert "on requests per day (RPD): Limit 5, Used 5, Requested 1" in message
    assert int(refused.headers["retry-after"]) == 86400 // 5  # one request back a day / 5
    assert answers[0].headers["x-ratelimit-limit-requests"] == "600"  # OpenAI: per minute


async def test_a_client_that_knows_the_daily_cap_never_draws_its_429() -> None:
    from maxllm_gate import KeyConfig, RequestTimeoutError, maxllm_gate

    fake = FakeProvider(default_limits=(600, 600_000), requests_per_day=5)
    async with fake.running():
        limits = {MODEL: {"rpm_limit": 600, "tpm_limit": 600_000, "rpd_limit": 5}}
        key = KeyConfig(
            api_key=KEY,
            provider="openai",
            models=limits,
            api_base=fake.url,
            transport="openai_compat",
            key_id="k1",
        )
        async with maxllm_gate(keys=[key]) as gate:
            for _ in range(5):
                await gate.chat(MODEL, "hi", max_tokens=8)
            started = time.monotonic()
            with pytest.raises(RequestTimeoutError, match="daily request cap"):
                await gate.chat(MODEL, "hi", max_tokens=8, timeout=5)
            elapsed = time.monotonic() - started
    assert elapsed < 0.01
    assert fake.rate_limited == 0 and fake.stats_for(KEY)["accepted"] == 5


async def test_no_rate_limit_headers() -> None:
    fake = FakeProvider(default_limits=(60, 6000), send_rate_limit_headers=False)
    async with fake.running(), client(fake) as http:
        ok = await post(http, max_tokens=10)
        refused = await post(http, max_tokens=10)
    assert not [h for h in ok.headers if h.startswith("x-ratelimit")]
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"


async def test_401_for_revoked_unknown_and_missing_keys() -> None:
    limits = {KEY: {MODEL: (600.0, 600_000.0)}, OTHER: {}}
    async with FakeProvider(limits=limits).running() as fake, client(fake) as http:
        assert (await post(http)).status_code == 200
        fake.revoke(KEY)
        revoked = await post(http)
        unknown = await post(http, key="sk-nobody")
        missing = await http.post("/chat/completions", json=body())
        other = await post(http, key=OTHER)
    for response in (revoked, unknown, missing):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert other.status_code == 200 and "x-ratelimit-limit-requests" not in other.headers
    assert fake.stats_for(KEY)["faults"] == 1 and fake.stats_for(KEY)["calls"] == 2


async def test_injected_faults() -> None:
    quota = {"error": {"message": "You exceeded your current quota.", "code": "insufficient_quota"}}
    fake = FakeProvider(limits={KEY: {MODEL: (600.0, 600_000.0)}, OTHER: {"*": (600, 600_000)}})
    async with fake.running(), client(fake) as http:
        fake.inject(500, times=2)
        fake.inject(429, api_key=OTHER, body=quota, headers={"retry-after": "7"})
        fake.inject(400)
        first, second = await post(http), await post(http)
        quota_hit = await post(http, key=OTHER)
        bad = await post(http)
        ok = await post(http)
    assert [r.status_code for r in (first, second, quota_hit, bad, ok)] == [500, 500, 429, 400, 200]
    assert first.json()["error"]["type"] == "server_error"
    assert quota_hit.json() == quota
    assert quota_hit.headers["retry-after"] == "7"
    assert quota_hit.headers["x-ratelimit-remaining-requests"] == "10"  # nothing charged
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert ok.headers["x-ratelimit-remaining-requests"] == "9"  # injected calls were free
    assert fake.rate_limited == 0  # injected 429s are not rate limiting
    assert fake.stats_for(KEY)["faults"] == 3 and fake.stats_for(OTHER)["faults"] == 1


async def test_error_rate_alternates_and_charges() -> None:
    # Ten requests a bucket, one back a second: the count below is not blurred by refill.
    fake = FakeProvider(default_limits=(60, 600_000), burst_window=10, error_rate=1.0)
    async with fake.running(), client(fake) as http:
        responses = [await post(http, max_tokens=10) for _ in range(3)]
    assert [r.status_code for r in responses] == [500, 503, 500]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses] == ["9", "8", "7"]
    stats = fake.stats_for(KEY)
    assert stats["accepted"] == stats["faults"] == 3 and stats["completion_tokens"] == 0


async def test_400_for_bad_requests() -> None:
    async with FakeProvider().running() as fake, client(fake) as http:
        malformed = await http.post(
            "/chat/completions", content=b"{not json", headers={**auth(), "content-type": "x"}
        )
        no_messages = await http.post("/chat/completions", json={"model": MODEL}, headers=auth())
        no_model = await http.post("/chat/completions", json={"messages": []}, headers=auth())
        zero = await post(http, max_tokens=0)
    for response in (malformed, no_messages, no_model, zero):
        assert response.status_code == 400
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
    assert no_messages.json()["error"]["param"] == "messages"
    assert no_model.json()["error"]["param"] == "model"
    assert zero.json()["error"]["param"] == "max_tokens"
    assert fake.accepted == 0


async def test_keep_alive_reuses_one_connection() -> None:
    fake = FakeProvider(default_limits=(60_000, 10_000_000))
    async with fake.running(), client(fake, limits=httpx.Limits(max_connections=1)) as http:
        for i in range(30):
            response = await post(http, max_tokens=10, stream=i % 2 == 1)
            assert response.status_code == 200
        assert (await http.get("/models")).status_code == 200
    assert fake.connections == 1
    assert fake.stats_for(KEY)["accepted"] == 30


async def test_200_concurrent_requests() -> None:
    fake = FakeProvider(default_limits=(1e6, 1e9), latency=0.3)
    statuses: list[int] = []

    async def one(http: httpx.AsyncClient, i: int) -> None:
        response = await post(http, key=f"sk-{i % 4}", max_tokens=10, stream=i % 2 == 0)
        statuses.append(response.status_code)

    async with fake.running(), contextlib.AsyncExitStack() as stack:
        # Ten clients of 20 connections: httpcore's pool gets slow past ~100 connections.
        limits = httpx.Limits(max_connections=20)
        clients = [await stack.enter_async_context(client(fake, limits=limits)) for _ in range(10)]
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, clients[i % 10], i)
        elapsed = anyio.current_time() - started
    assert statuses == [200] * 200
    assert elapsed < 5.0  # served concurrently: one after another would take 60 s
    assert fake.connections == 200
    stats = fake.stats()
    assert sum(s["accepted"] for s in stats.values()) == 200
    # Normally all 200 at once; a loaded machine may connect some after the first answers.
    assert sum(s["max_in_flight"] for s in stats.values()) >= 100
    assert all(s["in_flight"] == 0 for s in stats.values())


async def test_stats_and_models_pages() -> None:
    limits = {KEY: {MODEL: (600.0, 6e5), "gpt-4o": (60.0, 1e5)}, OTHER: {"o3": (1.0, 1.0)}}
    async with FakeProvider(limits=limits).running() as fake, client(fake) as http:
        await post(http, max_tokens=10)
        models = await http.get("/models")
        async with httpx.AsyncClient() as plain:  # /stats has no /v1 prefix
            stats = await plain.get(fake.url.removesuffix("/v1") + "/stats")
        not_found = await http.get("/nowhere")
    assert models.json() == {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "fake"}
            for name in ("gpt-4o", MODEL, "o3")
        ],
    }
    assert stats.json() == fake.stats()
    assert KEY not in stats.text
    assert stats.json()[key_fingerprint(KEY)]["accepted"] == 1
    assert set(stats.json()[key_fingerprint(KEY)]) == {
        "calls",
        "accepted",
        "rate_limited",
        "faults",
        "prompt_tokens",
        "completion_tokens",
        "charged_tokens",
        "in_flight",
        "max_in_flight",
    }
    assert not_found.status_code == 404


async def test_client_disconnecting_mid_stream_settles() -> None:
    # 600 tokens a bucket refilling 10 a second, so a refund is plain to see.
    fake = FakeProvider(
        default_limits=(600, 600),
        burst_window=60,
        seconds_per_token=0.005,
        completion_tokens=400,
        token_accounting="usage",
    )
    async with fake.running(), client(fake) as http:
        request = body(max_tokens=400, stream=True)
        async with http.stream("POST", "/chat/completions", json=request, headers=auth()) as r:
            charged = int(r.headers["x-ratelimit-remaining-tokens"])
            assert charged == 600 - CHARGE - 400
            lines = 0
            async for line in r.aiter_lines():
                lines += bool(line)
                if lines == 3:
                    break  # leaving the block closes the connection mid-stream
        await eventually(lambda: fake.stats_for(KEY)["in_flight"] == 0)
        stats = fake.stats_for(KEY)
        assert stats["max_in_flight"] == 1
        assert 12 <= stats["completion_tokens"] < 400
        after = await post(http, max_tokens=1)
    # The unused completion came back: far more than the few tokens refilled meanwhile.
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    assert remaining > charged - CHARGE - 1 + 300


async def test_hang_until_the_client_gives_up() -> None:
    fake = FakeProvider(default_limits=(600, 600_000), hang_rate=1.0)
    async with fake.running(), client(fake) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/chat/completions", json=body(), headers=auth(), timeout=0.2)
        await eventually(lambda: fake.stats_for(KEY)["in_flight"] == 0)
    assert fake.stats_for(KEY)["faults"] == 1


async def test_running_reraises_plain_errors_and_stops() -> None:
    fake = FakeProvider()
    with pytest.raises(ValueError, match="boom"):
        async with fake.running():
            raise ValueError("boom")
    with pytest.raises(RuntimeError):
        fake.url  # noqa: B018


async def test_serve_with_start() -> None:
    fake = FakeProvider()
    async with anyio.create_task_group() as tg:
        url = await tg.start(fake.serve)
        assert url == fake.url
        async with httpx.AsyncClient(base_url=url) as http:
            assert (await post(http)).status_code == 200
        tg.cancel_scope.cancel()


async def test_command_line_entry_point(anyio_backend: str) -> None:
    command = [
        sys.executable,
        "-m",
        "maxllm_gate.testing.fake_provider",
        *("--port", "0", "--rpm", "60", "--tpm", "10000", "--burst-window", "1"),
        *("--latency", "0.05", "--keys", "k1,k2", "--backend", anyio_backend),
    ]
    process = await anyio.open_process(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = b""
        with anyio.fail_after(10):
            while not line.endswith(b"\n"):
                line += await process.stdout.receive(1)
        word, url = line.decode().split()
        assert word == "URL" and url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            ok = await post(http, key="k1", max_tokens=10)
            refused = await post(http, key="k1", max_tokens=10)
            unknown = await post(http, key="k3", max_tokens=10)
        assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-tokens"] == "10000"
        assert refused.status_code == 429  # 60 RPM in 1 s buckets: one request at a time
        assert unknown.status_code == 401
    finally:
        process.terminate()
        with anyio.fail_after(5):
            returncode = await process.wait()
        await process.aclose()
    assert returncode == 0  # SIGTERM stops it cleanly
