"""The charge: what a provider's limiter debits for a request when it admits it.

The charge is not the usage. Usage (what the model read and wrote, what the
bill says) is counted with the model's tokenizer, in :mod:`maxllm_gate.tokens`.
The limiter does not run a tokenizer: OpenAI's rate-limit guide says a request
is counted as "the maximum of max_tokens and the estimated number of tokens
based on the character count of your request", and what its limiter debits
(its ``x-ratelimit-remaining-tokens`` headers show it) is that character
estimate *plus* ``max_tokens``. So admission reserves the charge, never the
usage estimate: tiktoken counts English prose at about 4.9 characters per
token, so a tiktoken reservation falls about 20% short of the debit.

The prompt part of a charge, by rule (``ModelLimits.charge``):

``"chars"``
    ``ceil(characters / 4)``, where the characters are those of every string
    in the messages but their roles (contents, text parts, names, tool call ids)
    and of any other field in its JSON form (tool calls), plus the JSON of
    ``tools``. Image parts count :data:`~maxllm_gate.tokens.IMAGE_TOKENS` each.
    Where a provider counts more than this (the whole body, say), the headers
    teach it within a few calls.
``"tokens"``
    the tokenizer's count with ``TOKEN_ESTIMATION_BUFFER``: for a provider whose
    limiter counts real tokens.
``"max"``
    the larger of the two: for providers whose rule we do not know. Text in
    scripts where a token holds fewer than 4 characters (CJK) is charged safely.

Then ``charge_factor`` multiplies the prompt part, and ``max_tokens`` is added
once per choice (``n``). An embedding request is charged its input alone
(:mod:`maxllm_gate.embeddings`): its strings' characters, and its token arrays'
lengths as given, the way images are here; no ``max_tokens``. Whatever the
rule, each key learns a correction from the provider's headers
(:mod:`maxllm_gate.limits.calibration`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from maxllm_gate.tokens import IMAGE_TOKENS, to_json

__all__ = [
    "CHARGE_RULES",
    "CHARS_PER_TOKEN",
    "PromptSize",
    "cache_reads_count",
    "default_charge_rule",
    "prompt_characters",
]

#: The rules a model's ``charge`` setting accepts.
CHARGE_RULES: tuple[str, ...] = ("chars", "tokens", "max")
#: OpenAI's rule of thumb, and its limiter's: about four characters per token.
CHARS_PER_TOKEN = 4
_IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})
# Providers documented to charge by characters (OpenAI's guide; Azure OpenAI runs it).
_CHARACTER_PROVIDERS = frozenset({"openai", "azure", "azure_ai"})


def default_charge_rule(provider: str) -> str:
    """The rule for a key of ``provider`` whose model names none."""
    return "chars" if provider.lower() in _CHARACTER_PROVIDERS else "max"


def prompt_characters(messages: Sequence[Mapping[str, Any]], tools: Any = None) -> tuple[int, int]:
    """The characters a character-based limiter counts, and the images' tokens.

    Returns ``(characters, image_tokens)``; see the module docs for the rule.
    Never raises for odd message contents.
    """
    chars = images = 0
    for message in messages:
        for name, value in message.items():
            if value is None or name == "role":
                continue
            if isinstance(value, str):
                chars += len(value)
            elif isinstance(value, (list, tuple)):
                for part in value:
                    if isinstance(part, str):
                        chars += len(part)
                    elif isinstance(part, Mapping) and part.get("type") in _IMAGE_PART_TYPES:
                        images += IMAGE_TOKENS
                    elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
                    else:
                        chars += len(to_json(part))
            else:
                chars += len(to_json(value))
    if tools:
        chars += len(to_json(tools))
    return chars, images


class PromptSize:
    """A prompt measured the ways a limiter may count it.

    ``characters`` and ``image_tokens`` as :func:`prompt_characters` counts them.
    ``tokens``, the tokenizer's count, is left None until a rule or the
    reconciliation needs it (whoever holds the tokenizer fills it in, once): a
    character rule never pays for a tokenizer, whose cost grows with the prompt.
    """

    __slots__ = ("characters", "image_tokens", "tokens")

    def __init__(self, characters: int, image_tokens: int, tokens: int | None = None) -> None:
        self.characters = characters
        self.image_tokens = image_tokens
        self.tokens = tokens

    def by_characters(self) -> int:
        """The ``"chars"`` rule: ``ceil(characters / 4)``, plus the images' tokens."""
        return -(-self.characters // CHARS_PER_TOKEN) + self.image_tokens

    def charge(self, rule: str, buffered_tokens: Callable[[], int]) -> int:
        """The prompt part of a charge under ``rule``, before ``charge_factor``.

        ``buffered_tokens()`` gives the tokenizer's count with the buffer; it is
        called only for the rules that use it.
        """
        if rule == "chars":
            return self.by_characters()
        buffered = buffered_tokens()
        return buffered if rule == "tokens" else max(self.by_characters(), buffered)

    def __repr__(self) -> str:
        return (
            f"PromptSize(characters={self.characters}, image_tokens={self.image_tokens}, "
            f"tokens={self.tokens})"
        )


# Anthropic's rate-limits page (https://docs.anthropic.com/en/api/rate-limits, as
# indexed at anthropic.mintlify.app/en/api/rate-limits and in its ja/fr/es/it
# versions): ITPM counts input_tokens and cache_creation_input_tokens, not
# cache_read_input_tokens, except on the models whose ITPM its tables mark with
# a dagger, where cache reads count too: Claude Sonnet 3.5 (2024-10-22 and
# 2024-06-20), Haiku 3.5, Opus 3, Sonnet 3 and Haiku 3. Not Sonnet 3.7 nor any
# Claude 4. Matched by prefix of the model's API name ("claude-3-sonnet" is not
# a prefix of "claude-3-5-sonnet" nor "claude-3-7-sonnet").
_CACHE_READS_COUNT = (
    "claude-3-5-sonnet",
    "claude-3-5-haiku",
    "claude-3-opus",
    "claude-3-sonnet",
    "claude-3-haiku",
)


def cache_reads_count(model: str) -> bool:
    """Whether Anthropic counts ``model``'s prompt-cache reads toward its ITPM limit."""
    name = model.rsplit("/", 1)[-1]
    return name.startswith(_CACHE_READS_COUNT)
