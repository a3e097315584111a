"""What a chat or an embedding call returns."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["ChatResponse", "EmbeddingResponse", "Usage"]


@attrs.frozen(slots=True)
class Usage:
    """Token counts of one completion, as the provider reported them.

    Also readable as a mapping (``usage["prompt_tokens"]``), as in 0.8.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = attrs.field()
    #: Of the prompt, the tokens read from the provider's prompt cache (Anthropic's
    #: ``cache_read_input_tokens``, OpenAI's ``prompt_tokens_details.cached_tokens``).
    cached_prompt_tokens: int = attrs.field(default=0, kw_only=True)

    @total_tokens.default
    def _total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __getitem__(self, name: str) -> int:
        if name not in ("prompt_tokens", "completion_tokens", "total_tokens"):
            raise KeyError(name)
        value: int = getattr(self, name)
        return value

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@attrs.frozen(slots=True)
class ChatResponse:
    """The answer to one ``chat()`` call.

    Attributes:
      content: the generated text (``None`` when the model only called tools).
      model: the model that answered.
      usage: token counts, or ``None`` if the provider sent none.
      finish_reason: ``"stop"``, ``"length"``, ``"tool_calls"``, ...
      latency: seconds from ``chat()`` being called to the answer.
      llm_latency: seconds the final provider call took.
      queue_time: seconds the request spent waiting for capacity, over all attempts.
      attempts: provider calls made, including 429s and retried failures.
      key_used: the ``key_id`` of the key that answered (never the key itself).
      request_id: the id in every log event about this request.
      tool_calls: the tool calls the model made, in OpenAI's format, if any.
      charged_tokens: the tokens admission reserved for the answering call: what
        the key's provider is taken to charge at admission (its rule, corrected by
        what the key learned from headers), not the usage.
      raw: the provider's own completion (its JSON object, or LiteLLM's response),
        for the fields not above (``logprobs``, ``system_fingerprint``, the usage
        details); ``None`` for a streamed call, or a provider that kept none.
    """

    content: str | None
    model: str
    usage: Usage | None
    finish_reason: str | None
    latency: float
    llm_latency: float
    queue_time: float
    attempts: int
    key_used: str
    request_id: str
    tool_calls: tuple[Mapping[str, Any], ...] | None = None
    charged_tokens: int = 0
    raw: Any = attrs.field(default=None, repr=False, eq=False)


@attrs.frozen(slots=True)
class EmbeddingResponse:
    """The answer to one ``embed()`` call.

    Attributes:
      vectors: one vector per input, in the order of the inputs.
      model: the model that answered.
      usage: the input's tokens as the provider reported them
        (``completion_tokens`` is 0), or ``None`` if it sent none.
      latency: seconds from ``embed()`` being called to the answer.
      llm_latency: seconds the final provider call took.
      queue_time: seconds the request spent waiting for capacity, over all attempts.
      attempts: provider calls made, including 429s and retried failures.
      key_used: the ``key_id`` of the key that answered (never the key itself).
      request_id: the id in every log event about this request.
      charged_tokens: the tokens admission reserved for the answering call: the
        input's charge by the key's rule, corrected by what the key learned.
      raw: the provider's own answer (its JSON object, or LiteLLM's response).
    """

    vectors: list[list[float]] = attrs.field(repr=lambda v: f"<{len(v)} vectors>")
    model: str
    usage: Usage | None
    latency: float
    llm_latency: float
    queue_time: float
    attempts: int
    key_used: str
    request_id: str
    charged_tokens: int = 0
    raw: Any = attrs.field(default=None, repr=False, eq=False)

    @property
    def dimensions(self) -> int:
        """The length of each vector (0 for no vectors)."""
        return len(self.vectors[0]) if self.vectors else 0
