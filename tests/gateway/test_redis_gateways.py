"""Two gateway processes share their keys' limits through Redis."""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from maxllm_gate.testing.fake_provider import fake_provider_process
from tests.gateway.conftest import FAST, FAST_KEYS, TOKEN, fake_stats, keys_config, run_gateway
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
