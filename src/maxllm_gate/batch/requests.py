"""Reading a batch: OpenAI's batch lines or bare bodies, one JSON object a line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

__all__ = ["BatchRequest", "InvalidLine", "count_lines", "parse_request", "read_requests"]

_CHAT_URL = "/v1/chat/completions"
_EMBEDDINGS_URL = "/v1/embeddings"
# Where a call goes and with what key is the configuration's business, not the input's.
_ROUTING = frozenset({"api_key", "api_base", "base_url", "custom_llm_provider", "api_version"})


@attrs.frozen(slots=True)
class BatchRequest:
    """One request of a batch. ``body`` is the chat completion's body, as sent, or with
    ``embedding`` the embeddings request's (``model``, ``input``...)."""

    custom_id: str
    body: Mapping[str, Any]
    priority: str | None = None
    line: int | None = None
    embedding: bool = False

    @property
    def model(self) -> str:
        return str(self.body.get("model"))


@attrs.frozen(slots=True)
class InvalidLine:
    """An input line that is not a request; it becomes an error record with ``reason``."""

    custom_id: str
    line: int | None
    reason: str


def parse_request(data: object, line: int | None = None) -> BatchRequest | InvalidLine:
    """One input object, batch format or bare body, as a request or the reason it is not one.

    Only the line's shape is checked here; the client validates the body itself.
    """
    fallback = f"line-{line}" if line is not None else "request"
    if not isinstance(data, Mapping):
        return InvalidLine(fallback, line, f"expected a JSON object, got {type(data).__name__}")
    custom_id = data.get("custom_id")
    embedding = False
    if "body" in data or "custom_id" in data:
        if not isinstance(custom_id, str) or not custom_id:
            return InvalidLine(fallback, line, "custom_id: must be a non-empty string")
        body = data.get("body")
        url = data.get("url", _CHAT_URL)
        if not isinstance(body, Mapping):
            return InvalidLine(custom_id, line, "body: must be a JSON object")
        if data.get("method", "POST") != "POST":
            return InvalidLine(custom_id, line, f"method: must be POST, got {data['method']!r}")
        embedding = isinstance(url, str) and url.rstrip("/").endswith("/embeddings")
        if not isinstance(url, str) or not (
            embedding or url.rstrip("/").endswith("/chat/completions")
        ):
            supported = f"{_CHAT_URL} and {_EMBEDDINGS_URL} are supported"
            return InvalidLine(custom_id, line, f"url: only {supported}, got {url!r}")
    else:
        custom_id, body = fallback, data
        embedding = "input" in body and "messages" not in body
    priority = data.get("priority", body.get("priority"))
    if embedding:
        return _embedding_request(custom_id, body, priority, line)
    if not isinstance(body.get("model"), str) or "messages" not in body:
        return InvalidLine(custom_id, line, "body: needs a model (a string) and messages")
    if body.get("stream"):
        return InvalidLine(custom_id, line, "stream: a batch does not stream; leave it out")
    if body.get("n", 1) not in (1, None):  # the others would be paid for and lost
        return InvalidLine(custom_id, line, "n: a batch keeps one choice a request; leave it out")
    routing = sorted(_ROUTING.intersection(body))
    if routing:  # LiteLLM would obey them: a line must not send a key elsewhere
        return InvalidLine(custom_id, line, f"{routing[0]}: not allowed in a body")
    if priority is not None and not isinstance(priority, str):
        return InvalidLine(custom_id, line, "priority: must be high, medium or low")
    body = {k: v for k, v in body.items() if k not in ("priority", "stream")}
    return BatchRequest(custom_id, body, priority, line)


def _embedding_request(
    custom_id: str, body: Mapping[str, Any], priority: Any, line: int | None
) -> BatchRequest | InvalidLine:
    if not isinstance(body.get("model"), str) or "input" not in body:
        return InvalidLine(custom_id, line, "body: needs a model (a string) and input")
    routing = sorted(_ROUTING.intersection(body))
    if routing:
        return InvalidLine(custom_id, line, f"{routing[0]}: not allowed in a body")
    if priority is not None and not isinstance(priority, str):
        return InvalidLine(custom_id, line, "priority: must be high, medium or low")
    body = {k: v for k, v in body.items() if k != "priority"}
    return BatchRequest(custom_id, body, priority, line, embedding=True)


def read_requests(path: str | os.PathLike[str]) -> Iterator[BatchRequest | InvalidLine]:
    """The requests of a JSONL file, lazily, line by line (blank lines skipped).

    A line that is not JSON, or not a request, comes as an `InvalidLine`.

    Raises:
      OSError: the file cannot be read.
    """
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                reason = f"not valid JSON: {exc}"
                yield InvalidLine(f"line-{number}", number, reason)
                continue
            yield parse_request(data, number)


def count_lines(path: str | os.PathLike[str]) -> int:
    """Non-blank lines in ``path``: the requests a run over it will see."""
    with open(path, "rb") as lines:
        return sum(1 for raw in lines if raw.strip())


def unique(
    items: Iterable[BatchRequest | InvalidLine | Mapping[str, Any]],
) -> Iterator[BatchRequest | InvalidLine]:
    """Parse dicts, and turn a repeated custom_id into an `InvalidLine` named by its line."""
    first_seen: dict[str, int | None] = {}
    for index, item in enumerate(items, start=1):
        if not isinstance(item, (BatchRequest, InvalidLine)):
            item = parse_request(item, index)
        if item.custom_id in first_seen:
            where = item.line if item.line is not None else index
            first = first_seen[item.custom_id]
            seen = f" (first on line {first})" if first is not None else ""
            reason = f"duplicate custom_id {item.custom_id!r}{seen}"
            name, n = f"line-{where}", 1
            while name in first_seen:  # only if an id names another line: stay unique
                n += 1
                name = f"line-{where}-{n}"
            item = InvalidLine(name, item.line, reason)
        first_seen[item.custom_id] = item.line
        yield item
