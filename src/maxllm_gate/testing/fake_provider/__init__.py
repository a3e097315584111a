"""A fake OpenAI-compatible provider over real HTTP, enforcing limits like OpenAI does.

It runs in process, in the test's own event loop (asyncio or trio), on a free
port of 127.0.0.1, and speaks enough of the OpenAI wire format for any
OpenAI-compatible client: ``POST /v1/chat/completions`` (plain and streamed),
``POST /v1/embeddings``, ``GET /v1/models``, and ``GET /stats``. Its enforcement mirrors
`~maxllm_gate.providers.simulated.SimulatedProvider`: a continuously refilling
RPM and TPM bucket per (api key, model), holding ``burst_window`` seconds of
each limit, charged ``prompt + max_tokens`` at admission. It counts and
enforces with its own model of a provider's limiter,
`maxllm_gate.testing.provider_limits`, never with the client's code: by
default the prompt is charged by its characters, as OpenAI does. A call that
does not fit gets a 429 with OpenAI's body and headers, and is counted: a gate
that works never sees one. An embedding request is charged its input only;
its vectors are `~maxllm_gate.testing.provider_limits.fake_vector` values (floats
or, with ``encoding_format: "base64"``, little-endian float32 in base64, as
OpenAI sends them), and past OpenAI's per-request limits it gets OpenAI's 400::

    async with FakeProvider(limits={"sk-1": {"gpt-4o-mini": (600, 60_000)}}).running() as fake:
        async with httpx.AsyncClient(base_url=fake.url) as http:
            ...
    assert fake.rate_limited == 0

Other processes can use it too: ``python -m maxllm_gate.testing.fake_provider
--rpm 60 --tpm 10000 --keys k1,k2`` prints ``URL http://127.0.0.1:PORT/v1``.

The package's parts: `~maxllm_gate.testing.fake_provider.server` (the
server, `FakeProvider`), ``limits`` (limit enforcement: the buckets of each key
and model, the ``x-ratelimit-*`` headers and the 429s), ``wire`` (OpenAI's
request checks, answers and stream chunks), ``faults`` (fault injection) and
``process`` (the command line and `fake_provider_process`).
"""

from maxllm_gate.config import key_fingerprint
from maxllm_gate.testing.fake_provider.process import fake_provider_process, main
from maxllm_gate.testing.fake_provider.server import FakeProvider
from maxllm_gate.testing.fake_provider.wire import format_go_duration

__all__ = ["FakeProvider", "fake_provider_process", "format_go_duration", "key_fingerprint", "main"]
