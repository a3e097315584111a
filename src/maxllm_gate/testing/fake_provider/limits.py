"""The fake provider's limit enforcement: which keys it knows, the buckets of each
(key, model), the ``x-ratelimit-*`` headers, and the 429 a call that does not fit gets."""

from __future__ import annotations

import math
from collections.abc import Mapping

from maxllm_gate.testing.fake_provider.wire import (
    JSON,
    Call,
    Headers,
    error_body,
    header_duration,
    number,
)
from maxllm_gate.testing.provider_limits import ModelLimiter, too_large_message

ANY_MODEL = "*"  # in `limits`: the limits of every model of that key not named


class LimitTable:
    """The limits of each (api key, model), and a `ModelLimiter` for each, made on first use.

    Args are `FakeProvider`'s of the same names.

    Raises:
      ValueError: ``burst_window`` is not positive.
    """

    def __init__(
        self,
        limits: Mapping[str, Mapping[str, tuple[float, float]]] | None,
        default_limits: tuple[float, float] | None,
        *,
        burst_window: float,
        requests_per_day: float | None,
        requests_per_day_headers: bool,
        send_rate_limit_headers: bool,
    ) -> None:
        if burst_window <= 0:
            raise ValueError("burst_window must be positive")
        self._limits = {key: dict(models) for key, models in (limits or {}).items()}
        self._default_limits = default_limits
        self.burst_window = burst_window
        self.requests_per_day = requests_per_day
        self.requests_per_day_headers = requests_per_day_headers
        self.send_rate_limit_headers = send_rate_limit_headers
        self._meters: dict[tuple[str, str], ModelLimiter | None] = {}

    def knows(self, api_key: str) -> bool:
        """Whether ``api_key`` may call at all (else a 401)."""
        return not self._limits or api_key in self._limits or self._default_limits is not None

    def models(self) -> list[str]:
        """The models named in the table, for ``/v1/models``."""
        return sorted({m for models in self._limits.values() for m in models} - {ANY_MODEL})

    def meter(self, api_key: str, model: str) -> ModelLimiter | None:
        """The buckets of (api_key, model), or None when that pair is unlimited."""
        try:
            return self._meters[api_key, model]
        except KeyError:
            pass
        models = self._limits.get(api_key, {})
        limits = models.get(model, models.get(ANY_MODEL, self._default_limits))
        meter = None
        if limits is not None:
            rpm, tpm = limits
            per_day = self.requests_per_day_headers
            rpd = self.requests_per_day
            meter = ModelLimiter(rpm, tpm, self.burst_window, per_day=per_day, rpd=rpd)
        self._meters[api_key, model] = meter
        return meter

    def headers(self, meter: ModelLimiter | None, now: float) -> Headers:
        """OpenAI's ``x-ratelimit-*`` headers for ``meter`` at ``now`` (none if unlimited)."""
        if meter is None or not self.send_rate_limit_headers:
            return []
        requests, request_limit = meter.requests, meter.rpm
        if meter.day is not None and self.requests_per_day_headers:  # Groq: per day
            requests, request_limit = meter.day, meter.rpd
        tokens = meter.tokens
        return [
            ("x-ratelimit-limit-requests", number(request_limit)),
            ("x-ratelimit-limit-tokens", number(meter.tpm)),
            ("x-ratelimit-remaining-requests", str(_floor(requests.available(now)))),
            ("x-ratelimit-remaining-tokens", str(_floor(tokens.available(now)))),
            ("x-ratelimit-reset-requests", header_duration(requests.seconds_until_full(now))),
            ("x-ratelimit-reset-tokens", header_duration(tokens.seconds_until_full(now))),
        ]

    def refusal(
        self, call: Call, meter: ModelLimiter, now: float, wait: float
    ) -> tuple[Headers, bytes]:
        """The headers and body of the 429 for ``call``, which fits in ``wait`` seconds."""
        if wait == math.inf:  # larger than the TPM limit: no wait would make it fit
            message = too_large_message(call.model, meter.tpm, call.charge)
            headers = [JSON, *self.headers(meter, now)]
            return headers, error_body(message, "tokens", "rate_limit_exceeded")
        # Name the dimension that holds the call back longer, as OpenAI's message does.
        holding_back = meter.holding_back(now, call.charge)
        if holding_back == "tokens":
            kind, unit, bucket = "tokens", "tokens per min (TPM)", meter.tokens
            requested, limit = call.charge, meter.tpm
        elif holding_back == "day" and meter.day is not None:
            kind, unit, bucket = "requests", "requests per day (RPD)", meter.day
            requested, limit = 1, meter.rpd
        else:
            kind, unit, bucket = "requests", "requests per min (RPM)", meter.requests
            requested, limit = 1, meter.rpm
        used = math.ceil(bucket.capacity - bucket.available(now) - 1e-9)
        message = (
            f"Rate limit reached for {call.model} in organization org-fake on {unit}: "
            f"Limit {number(limit)}, Used {used}, Requested {requested}. "
            f"Please try again in {header_duration(wait)}."
        )
        headers = [
            JSON,
            ("retry-after", str(max(1, math.ceil(wait - 1e-9)))),
            ("retry-after-ms", str(math.ceil(wait * 1000 - 1e-6))),
            *self.headers(meter, now),
        ]
        return headers, error_body(message, kind, "rate_limit_exceeded")


def _floor(value: float) -> int:
    return math.floor(value + 1e-6)  # float noise: 2.9999999 units left are 3, not 2
