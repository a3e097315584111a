"""The smallest useful program: one key, one request, under asyncio.

Run it with::

    python examples/simple_async.py

It runs offline against ``SimulatedProvider``, an in-process provider that
enforces rate limits the way OpenAI does. With real keys you would instead put
``API_KEYS_CONFIG`` in the environment (or a ``.env`` file) and write::

    async with maxllm_gate.from_env() as client:
        ...

and each key would call its provider through its transport (LiteLLM, or the
native OpenAI-compatible one) instead of ``provider=``.
"""

import asyncio

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate

KEY = KeyConfig(
    api_key="sk-example-not-a-real-key",
    provider="openai",
    key_id="openai-1",
    models={"gpt-4o-mini": {"rpm_limit": 500, "tpm_limit": 90_000}},
)


async def main() -> None:
    provider = SimulatedProvider(latency=0.2, completion_tokens=12)
    async with maxllm_gate(keys=[KEY], provider=provider) as client:
        response = await client.chat("gpt-4o-mini", "Explain rate limits in one sentence.")
        print("content:   ", response.content)
        print("usage:     ", response.usage.as_dict() if response.usage else None)
        print("key used:  ", response.key_used)
        print(f"latency:    {response.latency:.3f} s (provider call {response.llm_latency:.3f} s)")
        print("attempts:  ", response.attempts)

        # A list of messages works too, and so do per-call settings.
        response = await client.chat(
            "gpt-4o-mini",
            [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Write a haiku about Python."},
            ],
            max_tokens=40,
            temperature=0.0,
        )
        print("finish:    ", response.finish_reason)


if __name__ == "__main__":
    asyncio.run(main())
