"""High-priority requests overtake a backlog of low-priority ones on a slow key.

Run it with::

    python examples/priority_requests.py

One key allows 12 requests a minute (one every 5 s). Eight low-priority bulk
requests are queued first, then three high-priority ones. The first low request
takes the key's one-request burst at once; after it, the high ones are served
before the rest of the backlog.

Priority only decides the order of requests that are waiting for capacity.
A request competes as if it had arrived ``level * priority_aging`` seconds
later (high 0, medium 1, low 2; ``priority_aging`` defaults to 30 s), so a low
request is never starved: it waits at most 60 s behind newer high ones.

Over a minute of rate-limited traffic runs here in milliseconds: trio's
``MockClock`` (via ``maxllm_gate.testing.virtual_time_backend``) jumps the
clock whenever every task is waiting.
"""

import time

import anyio

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate
from maxllm_gate.testing import virtual_time_backend

MODEL = "llama-3.1-70b-versatile"
SLOW_KEY = KeyConfig(
    api_key="gsk-example-slow",
    provider="groq",
    key_id="slow",
    models={MODEL: {"rpm_limit": 12, "tpm_limit": 100_000}},
)


async def main() -> None:
    finished: list[str] = []
    async with maxllm_gate(keys=[SLOW_KEY], provider=SimulatedProvider(latency=1.0)) as client:
        start = anyio.current_time()

        async def ask(name: str, priority: str) -> None:
            await client.chat(MODEL, f"{name} request", priority=priority, max_tokens=64)
            finished.append(name)
            print(f"t={anyio.current_time() - start:5.1f} s  {name}")

        # Tasks started together begin in no fixed order; the short sleeps make the
        # arrival order (which FIFO within a priority follows) the order of the loops.
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(ask, f"low-{i}", "low")
                await anyio.sleep(0.01)
            for i in range(3):
                tg.start_soon(ask, f"HIGH-{i}", "high")
                await anyio.sleep(0.01)

    assert finished[1:4] == ["HIGH-0", "HIGH-1", "HIGH-2"], finished


if __name__ == "__main__":
    backend, options = virtual_time_backend("trio")
    wall = time.perf_counter()
    anyio.run(main, backend=backend, backend_options=options)
    print(f"(virtual time; took {time.perf_counter() - wall:.3f} s of real time)")
