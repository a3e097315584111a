"""Embed a corpus for a search index, offline, and search it.

Run it with::

    python examples/embeddings_index.py

Chunks a few documents, embeds them in batches of 64 inputs with
``client.embed()`` over two keys, then ranks the chunks against a query by
cosine similarity. It runs against ``SimulatedProvider`` on virtual time: no
network, no keys, and seconds of rate-limited traffic take milliseconds.
The simulated vectors are derived from each input's text only (the same text
gives the same vector), so the search finds the chunk that equals the query.
Against a real provider, drop ``provider=`` and the virtual-time backend, and
the same code embeds through your keys.
"""

import anyio

from maxllm_gate import KeyConfig, SimulatedProvider, maxllm_gate
from maxllm_gate.testing import virtual_time_backend

# A name tiktoken does not know: no tokenizer to load, nothing off the virtual clock.
MODEL = "sim-embedding-model"
BATCH = 64  # inputs per request; OpenAI takes up to 2,048


def keys() -> list[KeyConfig]:
    limits = {MODEL: {"rpm_limit": 60, "tpm_limit": 20_000}}
    return [
        KeyConfig(api_key=f"sk-example-{n}", provider="openai", key_id=f"key-{n}", models=limits)
        for n in (1, 2)
    ]


def chunks(documents: list[str], words: int = 12) -> list[str]:
    out = []
    for document in documents:
        tokens = document.split()
        out += [" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]
    return out


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors


async def main() -> None:
    documents = [
        " ".join(f"Document {d} sentence {s} is about rate limits and queues." for s in range(40))
        for d in range(10)
    ]
    texts = chunks(documents)
    provider = SimulatedProvider(latency=0.3)
    async with maxllm_gate(keys=keys(), provider=provider) as client:
        start = anyio.current_time()
        vectors: list[list[float]] = [[] for _ in texts]

        async def embed_batch(first: int) -> None:
            batch = texts[first : first + BATCH]
            response = await client.embed(MODEL, batch, dimensions=256)
            vectors[first : first + len(batch)] = response.vectors

        async with anyio.create_task_group() as tg:
            for first in range(0, len(texts), BATCH):
                tg.start_soon(embed_batch, first)
        elapsed = anyio.current_time() - start

        query = texts[17]
        (query_vector,) = (await client.embed(MODEL, query, dimensions=256)).vectors
    best = max(range(len(texts)), key=lambda i: cosine(vectors[i], query_vector))
    print(f"{len(texts)} chunks embedded in {elapsed:.1f}s of (virtual) time")
    print(f"provider 429s: {provider.rate_limited}")
    print(f"best match for the query: chunk {best}")
    assert provider.rate_limited == 0
    assert best == 17
    assert all(len(v) == 256 for v in vectors)


if __name__ == "__main__":
    backend, options = virtual_time_backend("asyncio")
    anyio.run(main, backend=backend, backend_options=options)
