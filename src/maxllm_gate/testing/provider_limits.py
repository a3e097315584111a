"""A provider's own rate limiter, modelled independently of the client's.

The fake providers judge the client. If they counted prompts with the client's
estimator and enforced limits with the client's GCRA cells, they would agree
with it by construction and could never show a wrong charge. So this module
imports nothing from the client (``maxllm_gate.limits``, ``maxllm_gate.tokens``,
the client or its actors) and models what the provider does, its own way:

**Buckets.** `ProviderBucket` holds a level that refills continuously at
``limit / 60`` per second, up to a capacity of ``burst_window`` seconds of the
limit (never below one unit). A charge larger than the capacity, but within
the per-minute limit, is admitted only into a full bucket and leaves it in
debt; a charge larger than the per-minute limit never fits: OpenAI answers
such a request with a 429 "Request too large".

**The charge.** What the limiter debits at admission is a prompt part plus a
completion part. OpenAI's rate-limit guide says a request counts as "the
maximum of max_tokens and the estimated number of tokens based on the
character count of your request". We model the sum (prompt estimate plus
``max_tokens``), the reading OpenAI's dashboards show. The prompt part is,
by ``charge``:

- ``"chars"`` (the default): ``ceil(C / 4)``, where ``C`` counts the
  characters of the text of every message: a string ``content``, the ``text``
  of each part of a list ``content``, the ``arguments`` of each tool call, and
  the JSON text (compact, as sent) of the request's ``tools``, if any. Roles,
  names and the JSON punctuation around the messages do not count. Each image
  part adds 765 tokens.
- ``"tokens"``: the provider's own tokenizer (`count_tokens`): each word or
  punctuation mark of those same texts is one token, each message adds 3, the
  reply's priming 3 more, and each image part 765.
- a callable ``charge(body) -> float``.

``charge_factor`` multiplies the prompt part (1.3: a provider charging 1.3
times its estimate); the result is rounded up to whole tokens. The completion
part is ``max_tokens``, else ``max_completion_tokens``, else 1024, times ``n``.

**Embeddings.** An embedding request (a body with ``input`` and no
``messages``) is charged its input only: ``"chars"`` counts the characters of
its strings, ``"tokens"`` its words and punctuation marks, and a token array
counts its length, under either rule; there is no completion part. One request
holds at most `MAX_EMBEDDING_INPUTS` inputs of at most
`MAX_EMBEDDING_INPUT_TOKENS` tokens each (by the provider's own count), else it
is refused with a 400 (`embedding_request_problem`). Its vectors are
`fake_vector` values: derived from the input alone, of unit length.

**Usage.** What the provider reports as ``usage.prompt_tokens`` is its own
tokenizer's count (`count_tokens`, with no factor), not the charge: as at
OpenAI, the two differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "IMAGE_TOKENS",
    "MAX_EMBEDDING_INPUTS",
    "MAX_EMBEDDING_INPUT_TOKENS",
    "ChargeRule",
    "ModelLimiter",
    "ProviderBucket",
    "count_characters",
    "count_tokens",
    "embedding_dimensions",
    "embedding_inputs",
    "embedding_request_problem",
    "estimate_from_characters",
    "fake_vector",
    "is_embedding",
    "max_tokens_charge",
    "too_large_message",
]

Body = Mapping[str, Any]

CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 765  # a high-detail 1024x1024 image on gpt-4o
DEFAULT_MAX_TOKENS = 1024  # charged for a request that sets no completion limit
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limits on one embedding request
MAX_EMBEDDING_INPUT_TOKENS = 8192
_EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}  # else 1536 (3-small, ada-002)
_PIECE = re.compile(r"\w+|[^\w\s]")
_IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})
# Float noise: a client that waits exactly the time we named must fit then.
_SLACK = 1e-9


class ProviderBucket:
    """One continuously refilling bucket of ``limit_per_minute`` units, holding ``capacity``.

    >>> bucket = ProviderBucket(limit_per_minute=60, capacity=2)  # 1 unit/s, burst of 2
    >>> bucket.take(now=0.0, amount=2)
    0.0
    >>> bucket.take(now=0.0, amount=1)  # refused: one unit is back a second later
    1.0

    Time is always passed in, and never goes back. A request is charged whole
    or not at all.

    Raises:
      ValueError: a limit or capacity that is not positive.
    """

    __slots__ = ("capacity", "level", "limit_per_minute", "rate", "updated")

    def __init__(self, limit_per_minute: float, capacity: float) -> None:
        if limit_per_minute <= 0 or capacity <= 0:
            raise ValueError("limit_per_minute and capacity must be positive")
        self.limit_per_minute = float(limit_per_minute)
        self.rate = self.limit_per_minute / 60.0  # units per second
        self.capacity = float(capacity)
        self.level = self.capacity  # negative while in debt
        self.updated = -math.inf

    @classmethod
    def for_limit(cls, limit_per_minute: float, burst_window: float) -> ProviderBucket:
        """A bucket holding ``burst_window`` seconds of the limit (at least one unit)."""
        return cls(limit_per_minute, max(1.0, limit_per_minute * burst_window / 60.0))

    def wait(self, now: float, amount: float) -> float:
        """Seconds from ``now`` until ``amount`` fits: 0.0 if it fits now, ``inf`` never.

        Never is a charge larger than the per-minute limit (a limit below one
        unit a minute still lets one unit through). A charge larger than the
        capacity fits once the bucket is full.
        """
        if amount > max(self.limit_per_minute, 1.0):
            return math.inf
        self._refill(now)
        short = min(amount, self.capacity) - self.level
        if short <= _SLACK * max(1.0, self.capacity):
            return 0.0
        return short / self.rate

    def take(self, now: float, amount: float) -> float:
        """Take ``amount`` if it fits at ``now`` (see `wait`).

        Returns 0.0 when taken; otherwise takes nothing and returns the seconds
        until it would fit (``inf``: never).
        """
        wait = self.wait(now, amount)
        if wait == 0.0:
            self.level -= amount
        return wait

    def debit(self, now: float, amount: float) -> None:
        """Take ``amount`` whether it fits or not, going into debt if need be."""
        self._refill(now)
        self.level -= amount

    def give_back(self, now: float, amount: float) -> None:
        """Return ``amount`` (unused completion): the bucket never holds more than its capacity."""
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)

    def available(self, now: float) -> float:
        """Units that could be taken at ``now`` (0 while in debt)."""
        self._refill(now)
        return max(0.0, self.level)

    def seconds_until_full(self, now: float) -> float:
        """Seconds until the bucket is full again if nothing more is taken."""
        self._refill(now)
        return max(0.0, (self.capacity - self.level) / self.rate)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            if self.level < self.capacity:
                self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def __repr__(self) -> str:
        return (
            f"ProviderBucket(limit_per_minute={self.limit_per_minute:g}, "
            f"capacity={self.capacity:g}, level={self.level:g})"
        )


class ModelLimiter:
    """The buckets a provider keeps for one (key, model): requests and tokens per
    minute, and a daily request count: enforced with ``rpd`` (a day's requests,
    refilling at ``rpd`` a day), or with ``per_day`` only reported, for Groq's
    headers (``rpm * 1440`` a day, the per-minute limit's average).

    Raises:
      ValueError: a limit that is not positive.
    """

    __slots__ = ("day", "day_enforced", "requests", "rpd", "rpm", "tokens", "tpm")

    def __init__(
        self,
        rpm: float,
        tpm: float,
        burst_window: float,
        *,
        per_day: bool = False,
        rpd: float | None = None,
    ):
        self.rpm, self.tpm = float(rpm), float(tpm)
        self.requests = ProviderBucket.for_limit(rpm, burst_window)
        self.tokens = ProviderBucket.for_limit(tpm, burst_window)
        self.day_enforced = rpd is not None
        self.rpd = float(rpd) if rpd is not None else float(rpm) * 1440
        self.day = ProviderBucket(self.rpd / 1440, self.rpd) if per_day or rpd else None

    def admit(self, now: float, tokens: float) -> float:
        """Charge one request and ``tokens`` if all fit at ``now``, else nothing.

        Returns 0.0 when charged; otherwise the seconds until all would fit
        (``inf`` when ``tokens`` exceeds the TPM limit: the request never fits).
        """
        wait = max(self.requests.wait(now, 1.0), self.tokens.wait(now, tokens))
        if self.day is not None and self.day_enforced:
            wait = max(wait, self.day.wait(now, 1.0))
        if wait > 0.0:
            return wait
        self.requests.take(now, 1.0)
        self.tokens.take(now, tokens)
        if self.day is not None:
            self.day.debit(now, 1.0)
        return 0.0

    def holding_back(self, now: float, tokens: float) -> str:
        """``"tokens"``, ``"requests"`` or ``"day"``: the limit that keeps a request
        of ``tokens`` out longest (tokens on a tie), as OpenAI's 429 names it."""
        token_wait, request_wait = self.tokens.wait(now, tokens), self.requests.wait(now, 1.0)
        day_wait = self.day.wait(now, 1.0) if self.day is not None and self.day_enforced else 0.0
        if day_wait > max(token_wait, request_wait):
            return "day"
        return "tokens" if token_wait >= request_wait else "requests"


def too_large_message(model: str, tpm: float, requested: float) -> str:
    """OpenAI's message for a request larger than the TPM limit, which never fits."""
    return (
        f"Request too large for {model} in organization org-fake on tokens per min (TPM): "
        f"Limit {_number(tpm)}, Requested {_number(requested)}. The input or output tokens must be "
        "reduced in order to run successfully."
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# -- what a request is charged --------------------------------------------------------------


def is_embedding(body: Body) -> bool:
    """Whether ``body`` is an embedding request: it has ``input`` and no ``messages``."""
    return "input" in body and "messages" not in body


def embedding_inputs(body: Body) -> list[str | list[int]]:
    """An embedding request's inputs: its strings and token arrays, one per vector."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    items = list(value) if isinstance(value, list) else []
    if items and all(isinstance(t, int) for t in items):
        return [items]  # one token array
    return items


def _array_tokens(body: Body) -> int:
    """The tokens of an embedding request's token arrays, counted as given."""
    if not is_embedding(body):
        return 0
    return sum(len(item) for item in embedding_inputs(body) if isinstance(item, list))


def _texts(body: Body) -> Iterator[str]:
    """The texts a provider counts in a request: see the module's docstring."""
    if is_embedding(body):
        yield from (item for item in embedding_inputs(body) if isinstance(item, str))
        return
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            yield content
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    yield part["text"]
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, Mapping) else None
            arguments = function.get("arguments") if isinstance(function, Mapping) else None
            if isinstance(arguments, str):
                yield arguments
    tools = body.get("tools")
    if tools:
        yield json.dumps(tools, separators=(",", ":"), ensure_ascii=False, default=str)


def _images(body: Body) -> int:
    count = 0
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, list):
            count += sum(
                1
                for part in content
                if isinstance(part, Mapping) and part.get("type") in _IMAGE_PARTS
            )
    return count


def count_characters(body: Body) -> int:
    """The characters of the texts of a chat request (``body``, as sent on the wire)."""
    return sum(len(text) for text in _texts(body))


def estimate_from_characters(body: Body) -> int:
    """OpenAI's limiter estimate of a prompt: a token per 4 characters, rounded up,
    plus 765 per image."""
    return (
        math.ceil(count_characters(body) / CHARS_PER_TOKEN)
        + IMAGE_TOKENS * _images(body)
        + _array_tokens(body)
    )


def count_tokens(body: Body) -> int:
    """The provider's own count of a prompt, as reported in ``usage.prompt_tokens``.

    A tiny deterministic tokenizer: each word or punctuation mark is a token;
    each message adds 3, the reply's priming 3, each image 765.
    """
    pieces = sum(len(_PIECE.findall(text)) for text in _texts(body))
    if is_embedding(body):
        return pieces + _array_tokens(body)
    messages = len(body.get("messages") or ())
    return pieces + TOKENS_PER_MESSAGE * messages + REPLY_PRIMING + IMAGE_TOKENS * _images(body)


def max_tokens_charge(body: Body) -> int:
    """The completion part of a charge: ``max_tokens``, else ``max_completion_tokens``,
    else 1024, times ``n``; none for an embedding request."""
    if is_embedding(body):
        return 0
    limit = body.get("max_tokens")
    if limit is None:
        limit = body.get("max_completion_tokens")
    if limit is None:
        limit = DEFAULT_MAX_TOKENS
    n = body.get("n")
    return int(limit) * (1 if n is None else int(n))


def embedding_request_problem(
    body: Body,
    max_inputs: int = MAX_EMBEDDING_INPUTS,
    max_input_tokens: int = MAX_EMBEDDING_INPUT_TOKENS,
) -> tuple[str, str] | None:
    """Why the provider refuses an embedding request with a 400, as ``(message,
    param)`` in OpenAI's words, or None: no input, too many, an empty or too long one."""
    items = embedding_inputs(body)
    if not items or any(not item for item in items):
        return "'$.input' is invalid. Please check the API reference.", "input"
    if len(items) > max_inputs:
        return (
            f"'$.input' is too long. Expected an array with maximum length {max_inputs}, "
            f"but got an array with length {len(items)} instead.",
            "input",
        )
    for item in items:
        tokens = len(_PIECE.findall(item)) if isinstance(item, str) else len(item)
        if tokens > max_input_tokens:
            return (
                f"This model's maximum context length is {max_input_tokens} tokens, however "
                f"you requested {tokens} tokens ({tokens} in your prompt; 0 for the "
                "completion). Please reduce your prompt; or completion length.",
                "input",
            )
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or dimensions < 1):
        return "Invalid value for 'dimensions': must be a positive integer.", "dimensions"
    return None


def embedding_dimensions(body: Body) -> int:
    """The length of the vectors an embedding request asks for: ``dimensions``, else
    the model's default (3072 for text-embedding-3-large, else 1536)."""
    dimensions = body.get("dimensions")
    if isinstance(dimensions, int) and dimensions > 0:
        return dimensions
    model = str(body.get("model", "")).rsplit("/", 1)[-1]
    return _EMBEDDING_DIMENSIONS.get(model, 1536)


def fake_vector(item: str | list[int], dimensions: int) -> list[float]:
    """A deterministic unit vector for one input: the same input gives the same
    vector, whoever serves it. Its components come from SHAKE-256 of the input."""
    seed = item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))
    raw = hashlib.shake_256(seed.encode("utf-8", "surrogatepass")).digest(4 * dimensions)
    values = [v / 2147483648.0 - 1.0 for v in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


_RULES: dict[str, Callable[[Body], float]] = {
    "chars": estimate_from_characters,
    "tokens": count_tokens,
}


class ChargeRule:
    """What a provider's limiter debits for a request at admission.

    Args:
      charge: ``"chars"``, ``"tokens"`` or a function of the request body giving
        the prompt part (see the module's docstring).
      charge_factor: multiplies the prompt part.

    Raises:
      ValueError: an unknown rule name, or a factor that is not positive.
    """

    __slots__ = ("factor", "rule")

    def __init__(
        self, charge: str | Callable[[Body], float] = "chars", charge_factor: float = 1.0
    ) -> None:
        if isinstance(charge, str):
            if charge not in _RULES:
                raise ValueError(f"charge must be 'chars', 'tokens' or a function, not {charge!r}")
            charge = _RULES[charge]
        if not charge_factor > 0:
            raise ValueError("charge_factor must be positive")
        self.rule = charge
        self.factor = float(charge_factor)

    def prompt(self, body: Body) -> int:
        """The prompt part of the charge, in whole tokens (rounded up)."""
        return math.ceil(self.rule(body) * self.factor - 1e-9)

    def __call__(self, body: Body) -> int:
        """The whole charge: the prompt part plus `max_tokens_charge`."""
        return self.prompt(body) + max_tokens_charge(body)
