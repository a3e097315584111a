from __future__ import annotations

from datetime import datetime, timezone

import pytest

from maxllm_gate.errors import (
    AuthenticationError,
    BadRequestError,
    QuotaExceededError,
    RateLimitError,
    TransientError,
)
from maxllm_gate.providers.headers import (
    RateLimitInfo,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    provider_error,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("120ms", 0.12),
        ("1h2m3.5s", 3723.5),
        ("0.5", 0.5),
        ("2", 2.0),
        ("250us", 0.00025),
        ("", None),
        ("soon", None),
        ("1x", None),
    ],
)
def test_go_durations_and_plain_seconds(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_openai_headers() -> None:
    info = parse_rate_limit_headers(
        {
            "X-RateLimit-Limit-Requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "90000",
            "x-ratelimit-remaining-tokens": "89000",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert info == RateLimitInfo(500, 499, 0.12, 90000, 89000, 360.0)


def test_litellm_prefixed_headers_and_groq_daily_requests() -> None:
    info = parse_rate_limit_headers(
        {
            "llm_provider-x-ratelimit-remaining-requests": "14000",
            "llm_provider-x-ratelimit-remaining-tokens": "5000",
        },
        provider="groq",
    )
    assert info is not None
    assert info.remaining_tokens == 5000 and info.requests_per_day


def test_anthropic_headers_with_rfc3339_resets() -> None:
    now = datetime(2027, 1, 15, 8, 0, 0, tzinfo=timezone.utc).timestamp()
    info = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:01Z",
            "anthropic-ratelimit-input-tokens-remaining": "40000",
            "anthropic-ratelimit-output-tokens-remaining": "8000",
            "anthropic-ratelimit-output-tokens-limit": "8000",
        },
        now_epoch=now,
    )
    assert info is not None
    assert info.remaining_requests == 49
    assert info.remaining_tokens == 8000  # the tighter of input and output
    assert info.reset_requests == pytest.approx(1.0)


def test_no_headers_means_no_info() -> None:
    assert parse_rate_limit_headers({"content-type": "application/json"}) is None


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"Retry-After-Ms": "1500", "retry-after": "2"}) == 1.5
    date = "Wed, 21 Oct 2015 07:28:05 GMT"
    assert parse_retry_after({"retry-after": date}, now_epoch=1445412480.0) == 5.0
    assert parse_retry_after({}) is None


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, {"error": {"code": "rate_limit_exceeded"}}, RateLimitError),
        (
            429,
            {"error": {"code": "insufficient_quota", "message": "out of credit"}},
            QuotaExceededError,
        ),
        (401, {"error": {"code": "invalid_api_key"}}, AuthenticationError),
        (403, None, AuthenticationError),
        (400, {"error": {"message": "context too long"}}, BadRequestError),
        (422, None, BadRequestError),
        (404, None, BadRequestError),
        (500, None, TransientError),
        (503, None, TransientError),
        (529, None, TransientError),
        (408, None, TransientError),
        (None, None, TransientError),
    ],
)
def test_errors_are_classified_by_status_and_code(
    status: int | None, body: object, expected: type
) -> None:
    error = provider_error(status, body=body)
    assert type(error) is expected
    assert error.status_code == status


def test_a_429_waits_for_retry_after_or_for_the_exhausted_dimension() -> None:
    assert provider_error(429, headers={"retry-after": "7"}).retry_after == 7.0
    error = provider_error(
        429,
        headers={
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "2s",
            "x-ratelimit-remaining-requests": "10",
            "x-ratelimit-reset-requests": "50ms",
        },
    )
    assert error.retry_after == 2.0


def test_the_provider_s_error_code_and_param_are_kept() -> None:
    body = {
        "error": {"message": "too long", "code": "context_length_exceeded", "param": "messages"}
    }
    error = provider_error(400, body=body)
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
    assert provider_error(400, body={"error": {"type": "invalid_request_error"}}).code is None


def test_the_error_message_comes_from_the_body() -> None:
    error = provider_error(400, body={"error": {"message": "max_tokens is too large"}})
    assert "max_tokens is too large" in str(error)


def test_a_gemini_429_waits_for_its_retry_delay() -> None:
    body = {
        "error": {
            "code": 429,
            "message": "Resource has been exhausted (e.g. check quota).",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "38s"},
            ],
        }
    }
    error = provider_error(429, body=body)
    assert isinstance(error, RateLimitError) and error.retry_after == 38.0
    # A retry-after header, when sent too, wins; so does Azure's retry-after-ms.
    assert provider_error(429, body=body, headers={"retry-after": "5"}).retry_after == 5.0
    headers = {"retry-after-ms": "1500", "retry-after": "2"}
    assert provider_error(429, body=body, headers=headers).retry_after == 1.5
    delay = {"error": {"details": [{"retryDelay": "0.25s"}]}}
    assert provider_error(429, body=delay).retry_after == 0.25
    for bad in ("soon", "nans", "-3s"):
        malformed = {"error": {"details": [{"retryDelay": bad}]}}
        assert provider_error(429, body=malformed).retry_after in (None, 0.0)


def test_anthropics_529_overloaded_error_is_transient() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    error = provider_error(529, body=body)
    assert isinstance(error, TransientError) and error.status_code == 529
    assert str(error) == "[529] Overloaded"


def test_anthropic_input_and_output_limits_are_kept_apart() -> None:
    info = parse_rate_limit_headers(
        {
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "7000",
            "retry-after": "3",
        }
    )
    assert info is not None
    assert info.remaining_tokens == 7000  # one token bucket: the tighter
    assert (info.remaining_output_tokens, info.limit_output_tokens) == (7000, 8000)
    apart = info.input_apart()  # a token bucket of input only (itpm_limit)
    assert (apart.remaining_tokens, apart.limit_tokens) == (39000, 40000)
    assert apart.remaining_output_tokens == 7000
