"""Two gateway processes share their keys' limits through Redis."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from maxllm_gate.testing.fake_provider import fake_provider_process
from tests.gateway.conftest import (
    FAST,
    FAST_KEYS,
    TOKEN,
    GatewayProcess,
    fake_stats,
    keys_config,
    run_gateway,
)
from tests.gateway.upstream import ScriptedUpstream, completion
from tests.state.conftest import RedisServer

RPM = 120  # two a second per key, a burst of two: the provider enforces it per second


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def test_two_gateways_on_one_redis_send_a_burst_without_a_429(
    redis_url: str, tmp_path: Path
) -> None:
    limits = {key: {FAST: (RPM, 1_000_000)} for key in FAST_KEYS}
    fake_limits = json.dumps({key: {FAST: [RPM, 1_000_000]} for key in FAST_KEYS})
    with fake_provider_process("--limits", fake_limits) as url:
        env = {
            "API_KEYS_CONFIG": keys_config(url, limits),
            "GATEWAY_API_KEYS": TOKEN,
            "REDIS_URL": redis_url,
        }
        with (
            run_gateway(tmp_path, env, name="one") as one,
            run_gateway(tmp_path, env, "--worker-class", "trio", name="two") as two,
        ):
            clients = [
                openai.OpenAI(base_url=g.url + "/v1", api_key=TOKEN, max_retries=0, timeout=20)
                for g in (one, two)
            ]
            requests = 20  # 4 at once, then 4 a second: about 4 s
            start = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(requests) as pool:
                futures = [
                    pool.submit(
                        client.chat.completions.create,
                        model=FAST,
                        messages=[{"role": "user", "content": f"question {i}"}],
                        max_tokens=4,
                    )
                    for i, client in zip(range(requests), itertools.cycle(clients))
                ]
                answers = [f.result(timeout=30) for f in futures]
            elapsed = time.monotonic() - start
        stats = fake_stats(url)
    assert all(a.choices[0].message.content == "lorem " * 4 for a in answers)
    assert sum(s["rate_limited"] for s in stats.values()) == 0, stats
    assert sum(s["accepted"] for s in stats.values()) == requests
    # Shared limits pace the burst: (20 - 4 at once) / 4 a second.
    assert elapsed > 3.5


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_each_gateway_reports_the_shared_limits_not_its_own_last_view(
    redis_url: str, tmp_path: Path, worker_class: str
) -> None:
    model, api_key = "upstream-model", "sk-shared-report-0123456789"
    with ScriptedUpstream(lambda body, key: completion(body)).running() as upstream:
        env = {
            # 6,000 TPM: a bucket of 100 tokens, refilled at 100 a second.
            "API_KEYS_CONFIG": keys_config(upstream.url, {api_key: {model: (600, 6000)}}),
            "GATEWAY_API_KEYS": TOKEN,
            "REDIS_URL": redis_url,
        }
        with (
            run_gateway(tmp_path, env, name="one") as one,
            run_gateway(tmp_path, env, "--worker-class", worker_class, name="two") as two,
        ):
            auth = {"authorization": f"Bearer {TOKEN}"}

            def remaining(gateway: GatewayProcess) -> dict[str, float]:
                capacity = httpx.get(gateway.url + "/capacity", headers=auth).json()
                data = httpx.get(gateway.url + "/dashboard/data", headers=auth).json()
                metrics = httpx.get(gateway.url + "/metrics", headers=auth).text
                gauge = [
                    sample.value
                    for family in text_string_to_metric_families(metrics)
                    for sample in family.samples
                    if sample.name == "maxllm_gate_remaining_tokens"
                ]
                return {
                    "capacity": capacity["keys"]["k1"]["models"][model]["tokens_remaining"],
                    "dashboard": data["keys"]["k1"]["models"][model]["tokens_remaining"],
                    "metric": gauge[0],
                }

            # Nothing spent yet: full, but for the half second a fresh pair in Redis
            # starts without (RedisState's cold_start).
            assert all(40 < left <= 100 for left in remaining(two).values())
            # Gateway one reserves 5,000 tokens: about 49 s of debt, in Redis.
            client = openai.OpenAI(base_url=one.url + "/v1", api_key=TOKEN, max_retries=0)
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5000
            )
            # Gateway two never served a call on the key, yet reports the debt.
            assert set(remaining(one).values()) == {0.0}
            assert set(remaining(two).values()) == {0.0}
