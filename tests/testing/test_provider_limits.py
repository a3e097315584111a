"""The provider's own limiter model, and the simulated provider charging with it."""

from __future__ import annotations

import json
import math
from typing import Any

import anyio
import httpx
import pytest

from maxllm_gate import SimulatedProvider
from maxllm_gate.errors import RateLimitError
from maxllm_gate.providers.base import ProviderCall
from maxllm_gate.testing.fake_provider import fake_provider_process, main
from maxllm_gate.testing.provider_limits import (
    ChargeRule,
    ModelLimiter,
    ProviderBucket,
    count_characters,
    count_tokens,
    estimate_from_characters,
    max_tokens_charge,
)
from tests.support import MODEL, make_key

# 1,200 characters of English: 20 sentences of 11 words and a full stop.
ENGLISH = "Limits keep a shared service fair to each of its customers. " * 20
REQUEST = {"model": MODEL, "messages": [{"role": "user", "content": ENGLISH}], "max_tokens": 200}
USAGE = 20 * 12 + 3 + 3  # the provider's tokenizer: pieces, one message, reply priming


def test_the_english_prompt_is_what_the_tests_say() -> None:
    assert len(ENGLISH) == 1200


# -- the bucket -----------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_continuously() -> None:
    bucket = ProviderBucket(limit_per_minute=600, capacity=100)  # 10 a second
    assert bucket.available(0.0) == 100
    assert bucket.take(0.0, 100) == 0.0
    assert bucket.take(0.0, 30) == pytest.approx(3.0)  # refused: nothing taken
    assert bucket.available(1.5) == pytest.approx(15)
    assert bucket.seconds_until_full(1.5) == pytest.approx(8.5)
    assert bucket.available(60.0) == 100  # never above capacity
    assert bucket.seconds_until_full(60.0) == 0.0


def test_waiting_exactly_the_time_named_is_enough() -> None:
    bucket = ProviderBucket(limit_per_minute=7_000, capacity=7_000 / 60 * 1.3)
    now = 1234.567
    assert bucket.take(now, 100.1) == 0.0
    wait = bucket.take(now, 77.7)
    assert wait > 0
    assert bucket.take(now + wait, 77.7) == 0.0


def test_bucket_oversize_charge_waits_for_a_full_bucket_and_leaves_debt() -> None:
    bucket = ProviderBucket.for_limit(600, burst_window=1.0)  # 10 a second, holds 10
    assert bucket.capacity == 10
    assert bucket.take(0.0, 1) == 0.0
    assert bucket.take(0.0, 50) == pytest.approx(0.1)  # only into a full bucket
    assert bucket.take(0.1, 50) == 0.0
    assert bucket.available(0.1) == 0.0
    assert bucket.seconds_until_full(0.1) == pytest.approx(5.0)  # 50 back at 10 a second
    assert bucket.take(4.1, 1) == pytest.approx(0.1)  # still in debt: -40 + 40 = 0


def test_bucket_refuses_forever_a_charge_above_the_minute_limit() -> None:
    bucket = ProviderBucket.for_limit(600, burst_window=60.0)
    assert bucket.take(0.0, 601) == math.inf
    assert bucket.available(0.0) == 600  # nothing was taken
    assert bucket.take(0.0, 600) == 0.0


def test_bucket_limits_below_one_unit_a_minute_still_admit_one() -> None:
    bucket = ProviderBucket.for_limit(0.5, burst_window=1.0)
    assert bucket.capacity == 1
    assert bucket.take(0.0, 1) == 0.0
    assert bucket.take(0.0, 1) == pytest.approx(120.0)


def test_bucket_give_back_and_debit() -> None:
    bucket = ProviderBucket(limit_per_minute=60, capacity=10)
    bucket.debit(0.0, 25)  # unconditional: 15 in debt
    assert bucket.available(0.0) == 0.0
    assert bucket.seconds_until_full(0.0) == pytest.approx(25.0)
    bucket.give_back(0.0, 20)
    assert bucket.available(0.0) == pytest.approx(5)
    bucket.give_back(0.0, 100)
    assert bucket.available(0.0) == 10  # never above capacity


def test_bucket_rejects_non_positive_limits() -> None:
    with pytest.raises(ValueError, match="positive"):
        ProviderBucket(limit_per_minute=0, capacity=1)


def test_limiter_charges_both_buckets_or_neither() -> None:
    limiter = ModelLimiter(rpm=60, tpm=6000, burst_window=2.0)  # holds 2 requests, 200 tokens
    assert limiter.admit(0.0, 150) == 0.0
    assert limiter.admit(0.0, 100) == pytest.approx(0.5)  # tokens short
    assert limiter.holding_back(0.0, 100) == "tokens"
    assert limiter.requests.available(0.0) == 1  # the refused call took no request
    assert limiter.admit(0.0, 10) == 0.0
    assert limiter.holding_back(0.0, 10) == "requests"
    assert limiter.admit(0.0, 6001) == math.inf  # too large, whatever else is short


def test_limiter_counts_requests_per_day_without_enforcing_them() -> None:
    limiter = ModelLimiter(rpm=30, tpm=6000, burst_window=1.0, per_day=True)
    assert limiter.day is not None
    assert limiter.admit(0.0, 10) == 0.0
    assert limiter.day.available(0.0) == 30 * 1440 - 1
    assert limiter.day.seconds_until_full(0.0) == pytest.approx(2.0)


# -- the charge -----------------------------------------------------------------------------


def test_chars_charge_of_an_english_prompt() -> None:
    assert ChargeRule()(REQUEST) == 300 + 200
    assert ChargeRule("chars", charge_factor=1.3)(REQUEST) == 390 + 200
    assert ChargeRule("chars", charge_factor=1.3).prompt(REQUEST) == 390


def test_usage_is_the_providers_tokenizer_not_the_charge() -> None:
    assert count_tokens(REQUEST) == USAGE
    assert ChargeRule("tokens")(REQUEST) == USAGE + 200
    assert count_tokens(REQUEST) != estimate_from_characters(REQUEST)


def test_what_the_characters_rule_counts() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]  # 45 characters of JSON
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "name": "rules", "content": "abcd"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "efgh"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a":1}'},
                    }
                ],
            },
        ],
        "tools": tools,
    }
    assert len(json.dumps(tools, separators=(",", ":"))) == 45
    assert count_characters(body) == 4 + 4 + 7 + 45  # no roles, names or punctuation
    assert estimate_from_characters(body) == math.ceil(60 / 4) + 765
    # abcd efgh; { " a " : 1 }; the tools' JSON in 25 pieces; 3 messages; priming; the image
    assert count_tokens(body) == 2 + 7 + 25 + 9 + 3 + 765


def test_the_completion_part_of_a_charge() -> None:
    messages = [{"role": "user", "content": ""}]
    assert max_tokens_charge({"messages": messages, "max_tokens": 50}) == 50
    assert max_tokens_charge({"messages": messages, "max_completion_tokens": 70}) == 70
    assert max_tokens_charge({"messages": messages}) == 1024
    assert max_tokens_charge({"messages": messages, "max_tokens": 50, "n": 3}) == 150
    assert ChargeRule()({"messages": messages, "max_tokens": 50, "n": 3}) == 150


def test_a_charge_function_and_bad_rules() -> None:
    rule = ChargeRule(lambda body: 99.5, charge_factor=2.0)
    assert rule(REQUEST) == 199 + 200
    with pytest.raises(ValueError, match="charge"):
        ChargeRule("tiktoken")
    with pytest.raises(ValueError, match="charge_factor"):
        ChargeRule("chars", charge_factor=0)


# -- the simulated provider -----------------------------------------------------------------


def call_of(body: dict[str, Any], rpm: float = 600, tpm: float = 60_000) -> ProviderCall:
    params = {k: v for k, v in body.items() if k not in ("model", "messages")}
    key = make_key("k1", rpm, tpm)
    return ProviderCall(key, MODEL, body["messages"], params, request_id="r1")


@pytest.mark.anyio
async def test_simulated_provider_charges_characters_and_reports_its_own_usage() -> None:
    provider = SimulatedProvider(completion_tokens=16, burst_window=60.0)
    response = await provider.complete(call_of(REQUEST))
    assert response.usage is not None and response.usage.prompt_tokens == USAGE
    assert response.headers["x-ratelimit-remaining-tokens"] == str(60_000 - 500)
    stats = provider.stats["k1"]
    assert stats.charged_tokens == 500 and stats.prompt_tokens == USAGE


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("charge", "factor", "charged"),
    [("chars", 1.3, 390 + 200), ("tokens", 1.0, USAGE + 200), (lambda body: 100, 1.0, 300)],
    ids=["chars-x1.3", "tokens", "function"],
)
async def test_simulated_provider_charge_rules(charge: Any, factor: float, charged: int) -> None:
    provider = SimulatedProvider(burst_window=60.0, charge=charge, charge_factor=factor)
    response = await provider.complete(call_of(REQUEST))
    assert response.headers["x-ratelimit-remaining-tokens"] == str(60_000 - charged)
    assert provider.stats["k1"].charged_tokens == charged


@pytest.mark.anyio
async def test_simulated_provider_refuses_a_request_above_the_tpm_limit_for_good() -> None:
    provider = SimulatedProvider(burst_window=60.0)
    with pytest.raises(RateLimitError) as caught:
        await provider.complete(call_of(REQUEST, tpm=499))
    error = caught.value
    assert error.status_code == 429 and error.retry_after is None
    assert error.code == "rate_limit_exceeded"
    assert "retry-after" not in error.headers
    assert "Request too large for sim-model" in str(error)
    assert "tokens per min (TPM): Limit 499, Requested 500." in str(error)
    stats = provider.stats["k1"]
    assert stats.rate_limited == 1 and stats.accepted == 0 and stats.charged_tokens == 0
    small = await provider.complete(call_of({**REQUEST, "max_tokens": 100}, tpm=499))
    assert small.headers["x-ratelimit-remaining-tokens"] == str(499 - 400)  # nothing was taken


@pytest.mark.anyio
async def test_simulated_provider_admits_an_oversize_request_into_a_full_bucket() -> None:
    provider = SimulatedProvider(burst_window=1.0)  # 600 TPM: a bucket of 10 tokens
    first = await provider.complete(call_of(REQUEST, tpm=600))
    assert first.headers["x-ratelimit-remaining-tokens"] == "0"
    assert first.headers["x-ratelimit-reset-tokens"] == "50.000s"  # 490 in debt, 10 a second
    with pytest.raises(RateLimitError) as caught:
        await provider.complete(call_of(REQUEST, tpm=600))
    assert caught.value.retry_after == pytest.approx(50.0)
    await anyio.sleep(50.0)  # virtual time
    await provider.complete(call_of(REQUEST, tpm=600))
    assert provider.stats["k1"].charged_tokens == 1000


@pytest.mark.anyio
async def test_simulated_provider_usage_accounting_refunds_the_unused_completion() -> None:
    provider = SimulatedProvider(completion_tokens=16, burst_window=60.0, token_accounting="usage")
    await provider.complete(call_of(REQUEST))
    assert provider.stats["k1"].charged_tokens == 300 + 16
    after = await provider.complete(call_of({**REQUEST, "max_tokens": 16}))
    assert after.headers["x-ratelimit-remaining-tokens"] == str(60_000 - 316 - 316)


# -- the fake provider's command line --------------------------------------------------------


def test_command_line_charge_flags() -> None:
    args = ("--rpm", "60", "--tpm", "60000", "--burst-window", "60")
    with fake_provider_process(*args, "--charge", "tokens", "--charge-factor", "2") as url:
        headers = {"Authorization": "Bearer sk-any"}
        response = httpx.post(f"{url}/chat/completions", json=REQUEST, headers=headers, timeout=10)
        stats = httpx.get(url.removesuffix("/v1") + "/stats", timeout=10).json()
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == USAGE  # the factor is not usage
    charged = 2 * USAGE + 200
    assert response.headers["x-ratelimit-remaining-tokens"] == str(60_000 - charged)
    assert [s["charged_tokens"] for s in stats.values()] == [charged]


def test_command_line_rejects_an_unknown_charge(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--charge", "tiktoken"])
    assert exited.value.code == 2
    assert "--charge" in capsys.readouterr().err
