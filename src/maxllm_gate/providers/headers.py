"""What a provider's answer says about its limits, and what kind of error it was.

Both transports (LiteLLM and native HTTP) hand their status codes, headers and
error bodies to the two functions here, so every provider error is classified
one way: by status code and error code, never by matching message text.

Headers understood:

- OpenAI, Groq, Together, OpenRouter and others: ``x-ratelimit-{limit,remaining,reset}-
  {requests,tokens}``; resets are Go durations (``1s``, ``6m0s``, ``120ms``) or
  plain seconds. Groq's request headers count per *day*, its token headers per minute.
- Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-
  {limit,remaining,reset}``; resets are RFC 3339 timestamps.
- ``retry-after`` (seconds or an HTTP date) and ``retry-after-ms``.
- LiteLLM's copies of them, prefixed ``llm_provider-``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from maxllm_gate.errors import (
    AuthenticationError,
    BadRequestError,
    ProviderError,
    QuotaExceededError,
    RateLimitError,
    TransientError,
)

__all__ = [
    "RateLimitInfo",
    "normalize_headers",
    "parse_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "provider_error",
]

_LITELLM_PREFIX = "llm_provider-"
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


@attrs.frozen(slots=True)
class RateLimitInfo:
    """A provider's view of one key's limits for one model, as of its answer.

    Resets are seconds from now until that dimension's bucket is full again.
    ``None`` means the provider did not say.
    """

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None
    #: the request headers describe a per-day limit (Groq), not a per-minute one
    requests_per_day: bool = False
    #: Anthropic's input- and output-token limits (ITPM and OTPM), apart; the
    #: tokens above are then the tighter of the two (see :meth:`input_apart`)
    limit_input_tokens: float | None = None
    remaining_input_tokens: float | None = None
    reset_input_tokens: float | None = None
    limit_output_tokens: float | None = None
    remaining_output_tokens: float | None = None
    reset_output_tokens: float | None = None

    def input_apart(self) -> RateLimitInfo:
        """This report for a key whose token bucket counts input only (Anthropic's
        ITPM, with output on a cell of its own): the tokens are the input tokens."""
        if self.remaining_input_tokens is None:
            return self
        return attrs.evolve(
            self,
            limit_tokens=self.limit_input_tokens,
            remaining_tokens=self.remaining_input_tokens,
            reset_tokens=self.reset_input_tokens,
        )

    @property
    def empty(self) -> bool:
        return (
            self.limit_requests is None
            and self.remaining_requests is None
            and self.reset_requests is None
            and self.limit_tokens is None
            and self.remaining_tokens is None
            and self.reset_tokens is None
        )


def normalize_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Lower-cased names, LiteLLM's ``llm_provider-`` prefix removed, values as str."""
    out: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if value is None:
            continue
        key = str(name).lower()
        if key.startswith(_LITELLM_PREFIX):
            key = key[len(_LITELLM_PREFIX) :]
        if key not in out:
            out[key] = value if type(value) is str else str(value)
    return out


def parse_duration(text: str) -> float | None:
    """Seconds in a Go duration (``6m0s``, ``1h2m3.5s``, ``120ms``) or a plain number."""
    text = text.strip()
    if not text:
        return None
    # The usual forms, without an exception: "12", "0.25s".
    number = text[:-1] if text[-1] == "s" and text[-2:-1] not in ("m", "") else text
    if number.replace(".", "", 1).isdigit():
        return float(number)
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _GO_DURATION.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    return total if position == len(text) else None


def _parse_reset(text: str, now_epoch: float) -> float | None:
    """A reset given as a duration, or as an RFC 3339 time (Anthropic)."""
    seconds = parse_duration(text)
    if seconds is not None:
        return seconds
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now_epoch)


def _number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_retry_after(
    headers: Mapping[str, str], *, now_epoch: float | None = None
) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    h = normalize_headers(headers)
    ms = _number(h, "retry-after-ms")
    if ms is not None:
        return max(0.0, ms / 1000.0)
    value = h.get("retry-after")
    if value is None:
        return None
    seconds = _number(h, "retry-after")
    if seconds is not None:
        return max(0.0, seconds)
    import email.utils  # only for an HTTP date; it costs 6 ms to import

    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_epoch is None else now_epoch
    return max(0.0, moment.timestamp() - now)


def parse_rate_limit_headers(
    headers: Mapping[str, Any] | None,
    *,
    provider: str | None = None,
    now_epoch: float | None = None,
) -> RateLimitInfo | None:
    """The limits a provider reported in ``headers``, or ``None`` if it sent none.

    ``now_epoch`` (Unix seconds) turns Anthropic's timestamps into delays; it
    defaults to the wall clock, the one clock those timestamps are on.
    """
    h = normalize_headers(headers)
    now = time.time() if now_epoch is None else now_epoch
    if any(name.startswith("anthropic-ratelimit-") for name in h):
        return _anthropic(h, now)
    info = RateLimitInfo(
        limit_requests=_number(h, "x-ratelimit-limit-requests"),
        remaining_requests=_number(h, "x-ratelimit-remaining-requests"),
        reset_requests=_reset(h, "x-ratelimit-reset-requests", now),
        limit_tokens=_number(h, "x-ratelimit-limit-tokens"),
        remaining_tokens=_number(h, "x-ratelimit-remaining-tokens"),
        reset_tokens=_reset(h, "x-ratelimit-reset-tokens", now),
        requests_per_day=(provider or "").lower() == "groq",
    )
    return None if info.empty else info


def _reset(h: Mapping[str, str], name: str, now: float) -> float | None:
    value = h.get(name)
    return None if value is None else _parse_reset(value, now)


def _anthropic(h: Mapping[str, str], now: float) -> RateLimitInfo | None:
    def dim(kind: str) -> tuple[float | None, float | None, float | None]:
        prefix = f"anthropic-ratelimit-{kind}-"
        return (
            _number(h, prefix + "limit"),
            _number(h, prefix + "remaining"),
            _reset(h, prefix + "reset", now),
        )

    requests = dim("requests")
    tokens = dim("tokens")
    inputs, outputs = dim("input-tokens"), dim("output-tokens")
    # Newer answers split input and output tokens; for a key with one token bucket
    # the tighter one bounds it (see RateLimitInfo.input_apart for one with two).
    if tokens == (None, None, None):
        splits = [d for d in (inputs, outputs) if d[1] is not None]
        if splits:
            tokens = min(splits, key=lambda d: d[1] if d[1] is not None else math.inf)
    info = RateLimitInfo(
        limit_requests=requests[0],
        remaining_requests=requests[1],
        reset_requests=requests[2],
        limit_tokens=tokens[0],
        remaining_tokens=tokens[1],
        reset_tokens=tokens[2],
        limit_input_tokens=inputs[0],
        remaining_input_tokens=inputs[1],
        reset_input_tokens=inputs[2],
        limit_output_tokens=outputs[0],
        remaining_output_tokens=outputs[1],
        reset_output_tokens=outputs[2],
    )
    return None if info.empty else info


def _reset_of_exhausted(info: RateLimitInfo) -> float | None:
    """When the dimension that ran out is full again; without one, the sooner reset."""
    dims = [
        (info.remaining_requests, info.reset_requests),
        (info.remaining_tokens, info.reset_tokens),
        (info.remaining_input_tokens, info.reset_input_tokens),
        (info.remaining_output_tokens, info.reset_output_tokens),
    ]
    exhausted = [reset for left, reset in dims if left is not None and left < 1 and reset]
    if exhausted:
        return max(exhausted)
    resets = [reset for _, reset in dims if reset is not None]
    return min(resets) if resets else None


def _error_field(body: Any, name: str) -> str | None:
    """``body["error"][name]`` (or ``body[name]``), if it is a string."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    value = error.get(name) if isinstance(error, Mapping) else None
    return value if isinstance(value, str) else None


def _error_code(body: Any) -> str | None:
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping):
            for field in ("code", "type"):
                value = error.get(field)
                if isinstance(value, str):
                    return value
    return None


def _error_message(body: Any, fallback: str) -> str:
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return fallback


def provider_error(
    status: int | None,
    *,
    body: Any = None,
    headers: Mapping[str, Any] | None = None,
    message: str | None = None,
) -> ProviderError:
    """The :class:`ProviderError` for an HTTP error answer, classified by status and code.

    ==================================  ===========================
    429 with ``insufficient_quota``     :class:`QuotaExceededError`
    429                                 :class:`RateLimitError`
    401, 403                            :class:`AuthenticationError`
    408, 409, 425, 5xx, or no status    :class:`TransientError`
    any other 4xx                       :class:`BadRequestError`
    ==================================  ===========================
    """
    h = normalize_headers(headers)
    text = message or _error_message(body, f"the provider answered {status}")
    code = _error_code(body)
    cls: type[ProviderError]
    if status == 429:
        cls = QuotaExceededError if code == "insufficient_quota" else RateLimitError
    elif status in (401, 403):
        cls = AuthenticationError
    elif status is None or status in (408, 409, 425) or status >= 500:
        cls = TransientError
    else:
        cls = BadRequestError
    retry_after = parse_retry_after(h)
    if retry_after is None and cls is RateLimitError:
        retry_after = _retry_delay(body)
    if retry_after is None and cls is RateLimitError:
        info = parse_rate_limit_headers(h)
        if info is not None:
            retry_after = _reset_of_exhausted(info)
    error = cls(
        text,
        status_code=status,
        retry_after=retry_after,
        headers=h,
        code=_error_field(body, "code"),
        param=_error_field(body, "param"),
    )
    if isinstance(error, RateLimitError):
        error.dimension = _limited_dimension(_error_field(body, "type"), text)
    return error


def _retry_delay(body: Any) -> float | None:
    """Google's ``RetryInfo`` in an error's ``details`` (Gemini's 429
    ``RESOURCE_EXHAUSTED``): ``"retryDelay": "38s"``, or "0.5s"."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    details = error.get("details") if isinstance(error, Mapping) else None
    for detail in details if isinstance(details, list) else ():
        delay = detail.get("retryDelay") if isinstance(detail, Mapping) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                continue
            if math.isfinite(seconds):
                return max(0.0, seconds)
    return None


def _limited_dimension(kind: str | None, message: str) -> str | None:
    """Which limit a 429 hit: OpenAI's error ``type`` says "requests" or "tokens"
    (its message names "(RPM)" or "(TPM)" too); None when neither says."""
    for dimension, unit in (("requests", "(RPM)"), ("tokens", "(TPM)")):
        if (kind or "").startswith(dimension) or unit in message:
            return dimension
    return None
