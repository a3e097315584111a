"""The provider seam: the one narrow interface between the scheduler and an LLM API.

Like an httpx transport, a provider knows nothing of limits, keys' state,
queues or retries. It makes one call with one key and either returns what the
provider said or raises the matching :class:`~maxllm_gate.errors.ProviderError`
subclass (classified by status code and exception type), with the provider's
headers attached so the scheduler can learn from them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from maxllm_gate.responses import Usage

if TYPE_CHECKING:
    from maxllm_gate.config import KeyConfig

__all__ = [
    "EmbeddingInput",
    "Provider",
    "ProviderCall",
    "ProviderEmbedding",
    "ProviderResponse",
    "ProviderStream",
    "StreamChunk",
]

#: What an embedding call embeds: a string, strings, or token arrays, as OpenAI takes.
EmbeddingInput = str | Sequence[str] | Sequence[Sequence[int]]


@attrs.frozen(slots=True)
class ProviderCall:
    """One call to make: which key, which model, what to send.

    ``params`` holds every OpenAI parameter besides ``model`` and ``messages``
    (``max_tokens`` and ``temperature`` among them, unless the caller gave none and
    asked that no default be sent: the gateway's pass-through). ``defaults`` names
    those the client filled in from its configuration, the caller having given
    none: a transport may leave out such a one that the model refuses (reasoning
    models take no ``temperature`` but 1), where it must not drop one asked for.

    An embedding call has ``input`` (and no ``messages``); its ``params`` are the
    embeddings API's (``dimensions``, ``user``...).

    A transport that knows when the request leaves, later than the call began
    (see `~maxllm_gate.providers.turns`), calls ``on_sent(at)`` then, on the
    caller's event loop, with that time on the caller's clock. One that stops
    waiting to know first calls it with the time it stopped (the request left
    no sooner); the send's own time follows, if it comes.
    """

    key: KeyConfig
    model: str
    messages: Sequence[Mapping[str, Any]]
    params: Mapping[str, Any]
    request_id: str
    defaults: frozenset[str] = frozenset()
    input: EmbeddingInput | None = None
    on_sent: Callable[[float], object] | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def key_id(self) -> str:
        return self.key.key_id


@attrs.frozen(slots=True)
class ProviderResponse:
    """A finished, non-streamed completion.

    ``raw`` is the provider's own completion (its JSON object, or LiteLLM's
    response), for relaying the fields this class does not carry (``logprobs``,
    ``system_fingerprint``, the usage details).
    """

    content: str | None
    finish_reason: str | None
    usage: Usage | None
    model: str
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    tool_calls: tuple[Mapping[str, Any], ...] | None = None
    raw: Any = attrs.field(default=None, repr=False, eq=False)
    #: When the request went out (``anyio.current_time()``), if the transport knows
    #: better than its caller: LiteLLM works for a while before it sends.
    sent_at: float | None = None


@attrs.frozen(slots=True)
class ProviderEmbedding:
    """A finished embedding call: one vector per input, in the inputs' order.

    ``raw`` is the provider's own answer; ``headers`` and ``sent_at`` are as in
    `ProviderResponse`.
    """

    vectors: list[list[float]] = attrs.field(repr=lambda v: f"<{len(v)} vectors>")
    usage: Usage | None
    model: str
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    raw: Any = attrs.field(default=None, repr=False, eq=False)
    sent_at: float | None = None


@attrs.frozen(slots=True)
class StreamChunk:
    """One piece of a streamed completion.

    ``text`` is the content delta (may be empty). The last chunk usually
    carries ``finish_reason`` and, when the provider sends it, ``usage``.
    ``raw`` is the provider's own chunk, for relaying it unchanged.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    raw: Any = attrs.field(default=None, repr=False, eq=False)


class ProviderStream(Protocol):
    """An open streamed completion. Iterate it for chunks; ``aclose()`` it always."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    def __aiter__(self) -> AsyncIterator[StreamChunk]: ...

    async def aclose(self) -> None: ...


class Provider(Protocol):
    """An execution backend: LiteLLM, native HTTP, or the simulated provider.

    Every call method raises :class:`~maxllm_gate.errors.ProviderError` subclasses on
    provider errors. Cancellation must abandon the call and release its
    connection.

    A transport that spends CPU on a call before it sends it may have a
    ``send_turns`` attribute (a `~maxllm_gate.providers.turns.SendTurns`): the
    caller then takes a turn before each call, and the transport calls the
    call's ``on_sent`` when the request leaves.
    """

    async def complete(self, call: ProviderCall) -> ProviderResponse:
        """Make the call and return the whole completion."""
        ...

    async def open_stream(self, call: ProviderCall) -> ProviderStream:
        """Start a streamed call; returns once the provider has accepted it."""
        ...

    async def embed(self, call: ProviderCall) -> ProviderEmbedding:
        """Embed ``call.input``: one vector per input, in their order."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads. Called once, at client shutdown."""
        ...
