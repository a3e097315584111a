"""Every exception maxllm_gate raises, in one tree.

::

    GateError
    ├── ConfigError            (also a ValueError) the configuration is wrong
    ├── ValidationError        (also a ValueError) a request is malformed
    │   └── RequestTooLargeError  no key's per-minute limit could ever admit it
    ├── QueueFullError         MAX_QUEUE_SIZE requests are already waiting
    ├── ShutdownError          the client is shutting down or shut down
    ├── RequestTimeoutError    (also a TimeoutError) the caller's timeout passed
    ├── NoKeyAvailableError    no enabled key serves the model
    └── ProviderError          the provider answered with an error we could not hide
        ├── BadRequestError       400, 422 and other 4xx: the request is wrong, never retried
        ├── AuthenticationError   401 / 403: the key is revoked or lacks access
        ├── QuotaExceededError    429 insufficient_quota: the key is out of money
        ├── RateLimitError        429: handled inside; seen only after max_rate_limit_retries
        └── TransientError        5xx, 408/409/425, timeouts, dropped connections: retried

Catch ``GateError`` to catch everything the library raises. No message, repr or
attribute of these exceptions ever holds a raw API key: keys are named by their
``key_id``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "ConfigError",
    "GateError",
    "NoKeyAvailableError",
    "ProviderError",
    "QueueFullError",
    "QuotaExceededError",
    "RateLimitError",
    "RequestTimeoutError",
    "RequestTooLargeError",
    "ShutdownError",
    "TransientError",
    "ValidationError",
]


_SHOWN_STRING_MAX = 16


def show_value(value: object) -> str:
    """How an error message shows a bad value: a bounded repr, and of a long string
    only its length (a long string in the wrong place may be a pasted API key)."""
    if isinstance(value, str) and len(value) > _SHOWN_STRING_MAX:
        return f"a string of {len(value)} characters (not shown: it may be a secret)"
    return reprlib.repr(value)  # bounded, so a huge bad value can't flood the message


class GateError(Exception):
    """The root of every exception maxllm_gate raises."""


class ConfigError(GateError, ValueError):
    """The configuration is invalid. The message names each bad key id and field."""


class ValidationError(GateError, ValueError):
    """A chat request is malformed. The message says which field and why."""


class RequestTooLargeError(ValidationError):
    """The request charges more tokens than a minute of any key serving its model
    allows: no provider would ever admit it. Raised at once; nothing was queued."""


class QueueFullError(GateError):
    """The queue already holds ``max_queue_size`` requests; nothing was enqueued."""


class ShutdownError(GateError):
    """The client is shutting down, or has shut down, before the request finished."""


class RequestTimeoutError(GateError, TimeoutError):
    """The request's own timeout passed, while it was queued or in flight."""


class NoKeyAvailableError(GateError):
    """No enabled key serves the requested model (none configured, or all disabled)."""


class ProviderError(GateError):
    """The provider answered with an error.

    Attributes:
      status_code: the HTTP status, when there was one.
      key_id: the id of the key that made the call (never the key itself).
      retry_after: seconds the provider asked us to wait, if it said.
      headers: the provider's response headers (lower-cased names).
      code: the provider's error code (``context_length_exceeded``...), if it gave one.
      param: the request parameter the provider named as the cause, if it did.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        key_id: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.key_id = key_id
        self.retry_after = retry_after
        self.headers: Mapping[str, str] = dict(headers or {})
        self.code = code
        self.param = param

    def scrub(self, *secrets: str) -> ProviderError:
        """Mask ``secrets`` (and every registered one) in the message, ``code``,
        ``param`` and header values, in place: a provider may echo the key back
        in any field of its error."""
        from maxllm_gate._logging import redact, scrub_exception

        scrub_exception(self, *secrets)
        if self.code is not None:
            self.code = redact(self.code, *secrets)
        if self.param is not None:
            self.param = redact(self.param, *secrets)
        self.headers = {name: redact(value, *secrets) for name, value in self.headers.items()}
        return self

    def __str__(self) -> str:
        text = super().__str__()
        where = f" (key {self.key_id})" if self.key_id else ""
        code = f"[{self.status_code}] " if self.status_code is not None else ""
        return f"{code}{text}{where}"


class BadRequestError(ProviderError):
    """400, 422 or another 4xx the other classes do not cover: the provider rejected the
    request itself. Never retried."""


class AuthenticationError(ProviderError):
    """401 or 403: the key is invalid or lacks access. The key is disabled."""


class QuotaExceededError(ProviderError):
    """429 with ``insufficient_quota``: the key is out of credit. The key is disabled."""


class RateLimitError(ProviderError):
    """429: the provider's limit was hit. The key cools down and the job is re-queued,
    up to ``max_rate_limit_retries`` times.

    ``dimension`` is ``"requests"`` or ``"tokens"`` when the provider said which
    limit it hit, else None.
    """

    dimension: str | None = None


class TransientError(ProviderError):
    """5xx, 408, 409, 425, a timeout or a dropped connection: retried with backoff."""
