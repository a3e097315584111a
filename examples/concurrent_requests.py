"""200 concurrent requests over 3 keys with different limits; no 429 reaches a caller.

Run it with::

    python examples/concurrent_requests.py

The three simulated keys allow 600, 1200 and 1800 requests per minute (10, 20
and 30 a second). The client routes each request to a key with room for it and
defers the rest until some key has room again, so the provider should never
have to answer 429. (On the real clock it may still answer one per key right
after the first burst; the client hides it. See "Known issues" in
docs/concepts.md.) Afterwards the example prints what the client saw: per-key
counts from ``status()``, ``capacity()``, ``latency()`` and ``scores()``.

This runs on the real clock and takes about 3 seconds. With real keys, the
same code would start from ``maxllm_gate.from_env()``.
"""

import asyncio
import time

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate

MODEL = "gpt-4o-mini"


def key(key_id: str, rpm: int, tpm: int) -> KeyConfig:
    return KeyConfig(
        api_key=f"sk-example-{key_id}",
        provider="openai",
        key_id=key_id,
        models={MODEL: {"rpm_limit": rpm, "tpm_limit": tpm}},
    )


KEYS = [key("small", 600, 100_000), key("medium", 1200, 200_000), key("large", 1800, 300_000)]


async def main() -> None:
    provider = SimulatedProvider(latency=0.05, completion_tokens=20)
    async with maxllm_gate(keys=KEYS, provider=provider) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(
            *(client.chat(MODEL, f"Question {i}", max_tokens=32) for i in range(200))
        )
        elapsed = time.perf_counter() - started

        print(f"{len(responses)} responses in {elapsed:.2f} s")
        print(f"longest wait for capacity: {max(r.queue_time for r in responses):.2f} s")
        print("\nper key (status):")
        for key_id, info in client.status()["keys"].items():
            print(f"  {key_id:7s} {info['successes']:4d} answered, {info['rate_limited']} 429s")

        totals = client.capacity()["total_capacity"]
        print("\ncapacity:", {name: round(value, 1) for name, value in totals.items()})

        print("\nlatency:")
        for key_id, stats in client.latency().items():
            print(f"  {key_id:7s} avg {stats['avg_ms']:6.1f} ms, p99 {stats['p99_ms']:6.1f} ms")

        print("\nscores (lower wins):")
        for key_id, score in client.scores(MODEL).items():
            print(
                f"  {key_id:7s} total {score['total_score']:.2f}, "
                f"utilization {score['utilization']:.2f}, freshness {score['freshness']:.2f}"
            )

    # Every caller got an answer: a 429 is never raised to the caller. A provider
    # 429 would only cool the key down and put the request back in line.
    print(f"\n429s answered by the provider: {provider.rate_limited} (raised to callers: 0)")


if __name__ == "__main__":
    asyncio.run(main())
