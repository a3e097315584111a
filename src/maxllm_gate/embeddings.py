"""Embedding requests, checked and measured once at the door.

`embedding_inputs` turns what a caller hands to ``embed()`` into a list of inputs
(strings, or token arrays), or raises `~maxllm_gate.errors.ValidationError`
naming what is wrong. `input_size` measures them the ways a limiter counts
them: an embedding request is charged its input only (no ``max_tokens``, no
output). A character-counting limiter (OpenAI's) counts ``ceil(characters / 4)``
of the strings; a token array counts its length. `check_request_limits` refuses
a request over the provider's per-request limits (``max_embedding_inputs``,
``max_embedding_input_tokens`` of the model's `~maxllm_gate.config.ModelLimits`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from maxllm_gate.errors import RequestTooLargeError, ValidationError
from maxllm_gate.limits import PromptSize

__all__ = ["check_request_limits", "embedding_inputs", "input_size"]

Input = str | list[int]


def embedding_inputs(value: Any) -> list[Input]:
    """The inputs of ``value``: a string, a list of strings, one token array (a list
    of ints) or a list of token arrays, as OpenAI's embeddings API takes.

    Raises:
      ValidationError: ``value`` is none of those, or holds an empty input.
    """
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        items = list(value)
        if items and all(_is_token(t) for t in items):
            items = [items]  # one token array
    else:
        raise ValidationError(
            "input: must be a string, a list of strings or a list of token arrays, "
            f"got {type(value).__name__}"
        )
    if not items:
        raise ValidationError("input: must hold at least one input, got an empty list")
    first_is_text = isinstance(items[0], str)
    for i, item in enumerate(items):
        if first_is_text:
            if not isinstance(item, str):
                raise ValidationError(
                    f"input[{i}]: must be a string like input[0], got {_kind(item)}"
                )
            if not item:
                raise ValidationError(f"input[{i}]: must not be an empty string")
        else:
            if not isinstance(item, Sequence) or isinstance(item, str | bytes | bytearray):
                raise ValidationError(
                    f"input[{i}]: must be a string or a token array (a list of ints), "
                    f"got {_kind(item)}"
                )
            if not item or not all(_is_token(t) for t in item):
                raise ValidationError(
                    f"input[{i}]: a token array must be a non-empty list of ints >= 0"
                )
            items[i] = list(item)
    return items


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _kind(value: Any) -> str:
    return type(value).__name__


def input_size(items: Sequence[Input]) -> PromptSize:
    """The inputs measured as a limiter counts them: the strings' characters, and
    the token arrays' tokens (counted as given, like images in a chat prompt)."""
    characters = tokens = 0
    for item in items:
        if isinstance(item, str):
            characters += len(item)
        else:
            tokens += len(item)
    return PromptSize(characters, tokens)


def check_request_limits(
    items: Sequence[Input],
    *,
    model: str,
    max_inputs: int,
    max_input_tokens: int,
    count_text: Callable[[str], int],
) -> None:
    """Refuse a request the provider would refuse: more than ``max_inputs`` inputs,
    or an input of more than ``max_input_tokens`` tokens (``count_text`` counts a
    string's; only strings longer in bytes than the limit are counted, as a token
    holds at least one byte).

    Raises:
      RequestTooLargeError: naming the input and the limit.
    """
    if len(items) > max_inputs:
        raise RequestTooLargeError(
            f"input: {len(items)} inputs, over the {max_inputs} one request to {model} may "
            "hold (max_embedding_inputs); split them over several requests"
        )
    for i, item in enumerate(items):
        if isinstance(item, str):
            if len(item.encode(errors="surrogatepass")) <= max_input_tokens:
                continue
            tokens = count_text(item)
        else:
            tokens = len(item)
        if tokens > max_input_tokens:
            raise RequestTooLargeError(
                f"input[{i}]: {tokens} tokens, over the {max_input_tokens} an input to {model} "
                "may hold (max_embedding_input_tokens); split or truncate it"
            )
