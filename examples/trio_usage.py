"""The same client under trio, plus streaming with ``chat_stream``.

Run it with::

    python examples/trio_usage.py

maxllm_gate is built on anyio, so the one client works under asyncio and trio
alike. This runs offline against ``SimulatedProvider``; with real keys, use
``maxllm_gate.from_env()`` instead of building the client by hand.
"""

import trio

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate

KEY = KeyConfig(
    api_key="sk-example-not-a-real-key",
    provider="groq",
    key_id="groq-1",
    models={"llama-3.1-8b-instant": {"rpm_limit": 120, "tpm_limit": 30_000}},
)


async def ask(client: maxllm_gate, question: str) -> None:
    response = await client.chat("llama-3.1-8b-instant", question, max_tokens=64)
    print(f"{question}: waited {response.queue_time:.2f} s for capacity")


async def main() -> None:
    # 0.1 s to the first token, then 20 ms per token: a stream arrives 4 tokens a chunk.
    provider = SimulatedProvider(latency=0.1, seconds_per_token=0.02, completion_tokens=12)
    async with maxllm_gate(keys=[KEY], provider=provider) as client:
        response = await client.chat("llama-3.1-8b-instant", "Hello from trio!", max_tokens=64)
        print(f"chat: {response.content!r} via {response.key_used} in {response.latency:.2f} s")

        print("stream: ", end="", flush=True)
        async for delta in client.chat_stream("llama-3.1-8b-instant", "A story", max_tokens=64):
            print(delta, end="|", flush=True)  # "|" marks where each chunk ended
        print()

        # Several requests at once, in a nursery. The key's 120 RPM with the default
        # 1-second burst admits 2 requests at once and then 2 per second, so the
        # client spreads these out instead of letting the provider answer 429.
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(ask, client, f"Question {i}")
        print("calls:", client.status()["keys"]["groq-1"]["calls"])
    print("429s seen by the provider:", provider.rate_limited)


if __name__ == "__main__":
    trio.run(main)
