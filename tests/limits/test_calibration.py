"""What a key learns of its provider's accounting: the charge factor and the rate scale.

The provider here is a few lines of its own (a refilling bucket that debits
``factor`` times our charge), so the calibration is judged by arithmetic it
does not share.
"""

from __future__ import annotations

import random

import pytest

from maxllm_gate.limits import ChargeCalibration, Cost
from maxllm_gate.limits.calibration import (
    DECREASE,
    FAST_RECOVERY_PER_MINUTE,
    GENTLE_DECREASE,
    RECOVERY_PER_MINUTE,
)

TPM = 60_000.0
RATE = TPM / 60.0  # tokens per second


class _Provider:
    """A provider's token bucket, by its full time, debiting ``factor`` × the charge."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.full_at = float("-inf")

    def admit(self, now: float, charge: float) -> float:
        """Debit the call; returns its ``x-ratelimit-reset-tokens``."""
        self.full_at = max(self.full_at, now) + self.factor * charge / RATE
        return self.full_at - now


def _feed(
    calibration: ChargeCalibration, provider: _Provider, calls: int, *, gap: float, jitter=0.0
) -> None:
    rng = random.Random(3)
    mark, now = 0.0, 0.0
    for _ in range(calls):
        reserved = calibration.reservation(Cost(tokens=500), now).tokens
        mark += reserved
        arrival = now + rng.uniform(0, jitter)  # the provider sees it a little later
        reset = provider.admit(arrival, 500)
        calibration.observe(sent_at=now, mark=mark, full_in=reset, limit_per_minute=TPM)
        now += gap


def test_a_provider_charging_1_3_times_is_learned_from_the_second_report() -> None:
    calibration = ChargeCalibration(TPM)
    _feed(calibration, _Provider(1.3), 2, gap=0.1)
    assert calibration.samples == 1
    assert calibration.factor == pytest.approx(1.3)
    assert calibration.reservation(Cost(tokens=500), 0.0).tokens == pytest.approx(500 * 1.31)


def test_jitter_in_when_calls_reach_the_provider_averages_out() -> None:
    calibration = ChargeCalibration(TPM)
    _feed(calibration, _Provider(0.85), 40, gap=0.2, jitter=0.03)
    assert calibration.factor == pytest.approx(0.85, rel=0.03)


def test_no_sample_spans_a_moment_the_providers_bucket_was_full() -> None:
    # One call a minute: the bucket fills between any two, so their reports say nothing
    # of what the provider debited in between.
    calibration = ChargeCalibration(TPM)
    _feed(calibration, _Provider(2.0), 5, gap=60.0)
    assert calibration.samples == 0
    assert calibration.factor == 1.0


def test_calls_refused_with_a_429_are_not_counted_as_debited() -> None:
    calibration = ChargeCalibration(TPM)
    provider = _Provider(1.0)
    calibration.observe(
        sent_at=0.0, mark=500, full_in=provider.admit(0.0, 500), limit_per_minute=TPM
    )
    calibration.refused(mark=1000, tokens=500)  # admitted by us, refused by the provider
    calibration.observe(
        sent_at=0.1, mark=1500, full_in=provider.admit(0.1, 500), limit_per_minute=TPM
    )
    assert calibration.factor == pytest.approx(1.0)


def test_a_report_that_arrives_after_a_newer_one_is_ignored() -> None:
    calibration = ChargeCalibration(TPM)
    calibration.observe(sent_at=0.0, mark=500, full_in=0.5, limit_per_minute=TPM)
    calibration.observe(sent_at=0.1, mark=1000, full_in=0.9, limit_per_minute=TPM)
    calibration.observe(sent_at=0.05, mark=800, full_in=0.2, limit_per_minute=TPM)
    assert calibration.samples == 1
    assert calibration.factor == pytest.approx(1.0)


def test_a_lower_factor_needs_a_longer_span_than_a_higher_one() -> None:
    lower, longer, higher = ChargeCalibration(TPM), ChargeCalibration(TPM), ChargeCalibration(TPM)
    _feed(lower, _Provider(0.8), 4, gap=0.1)
    _feed(longer, _Provider(0.8), 5, gap=0.1)
    _feed(higher, _Provider(1.2), 2, gap=0.1)
    assert lower.samples == 0  # three reports past the anchor: not yet
    assert longer.samples == 1 and longer.factor == pytest.approx(0.8)
    assert higher.samples == 1 and higher.factor == pytest.approx(1.2)


def test_a_429_without_headers_cuts_the_rate_it_names_and_it_grows_back() -> None:
    calibration = ChargeCalibration(TPM)
    assert calibration.rate_limited(10.0, admitted_at=9.9, dimension="tokens")
    assert calibration.tokens_scale.value(10.0) == pytest.approx(DECREASE)
    assert calibration.requests_scale.value(10.0) == 1.0
    # A call admitted before the cut overshot under the old rate: no second cut for it.
    assert not calibration.rate_limited(10.1, admitted_at=9.95, dimension="tokens")
    reserved = calibration.reservation(Cost(tokens=500), 10.0)
    assert reserved.tokens == pytest.approx(500 / DECREASE)
    # Fast up to 95% of where the 429 came, then slowly.
    grown = DECREASE + FAST_RECOVERY_PER_MINUTE
    assert calibration.tokens_scale.value(70.0) == pytest.approx(grown)
    minutes_to_knee = (0.95 - DECREASE) / FAST_RECOVERY_PER_MINUTE
    later = 10.0 + 60 * (minutes_to_knee + 1)
    assert calibration.tokens_scale.value(later) == pytest.approx(0.95 + RECOVERY_PER_MINUTE)
    assert calibration.tokens_scale.value(1e6) == 1.0
    # When the provider does not say which limit it hit, both are cut.
    assert calibration.rate_limited(80.0, admitted_at=80.0, dimension=None)
    assert calibration.requests_scale.value(80.0) == pytest.approx(DECREASE)


def test_a_429_once_the_rate_grew_back_cuts_gently_one_right_after_a_cut_deeply() -> None:
    calibration = ChargeCalibration(TPM)
    calibration.rate_limited(0.0, admitted_at=0.0, dimension="tokens")
    # Right after the cut: it was not deep enough.
    calibration.rate_limited(1.0, admitted_at=1.0, dimension="tokens")
    deep = calibration.tokens_scale.value(1.0)
    assert deep == pytest.approx(DECREASE * (DECREASE + FAST_RECOVERY_PER_MINUTE / 60), rel=1e-3)
    # Grown back to where 429s come: the ceiling is found, cut a little.
    grown = calibration.tokens_scale.value(61.0)
    calibration.rate_limited(61.0, admitted_at=61.0, dimension="tokens")
    assert calibration.tokens_scale.value(61.0) == pytest.approx(grown * GENTLE_DECREASE)


def test_headers_prove_the_limits_so_429s_never_cut_below_them() -> None:
    calibration = ChargeCalibration(TPM)
    calibration.observe(sent_at=0.0, mark=500, full_in=0.5, limit_per_minute=TPM)
    assert not calibration.rate_limited(1.0, admitted_at=1.0, dimension="tokens")
    assert calibration.tokens_scale.value(1.0) == 1.0


def test_no_reservation_takes_more_than_a_minute_of_the_limit() -> None:
    calibration = ChargeCalibration(TPM)
    assert calibration.reservation(Cost(tokens=10**9), 0.0).tokens == TPM


def test_a_burst_admitted_before_the_factor_rose_does_not_push_it_further() -> None:
    # A burst is admitted at once, at factor 1. The first report comes 3% high (the
    # call reached the provider late): the factor rises to 1.03. The burst's other
    # calls were still reserved at 1: read as charged 1.03 times less, they would
    # show the provider charging more again, and ratchet the factor up.
    calibration = ChargeCalibration(TPM)
    provider = _Provider(1.0)
    mark, lag = 0.0, 0.015
    for n in range(40):
        mark += 500  # all reserved before any report: at factor 1
        sent = n * 0.01
        reset = provider.admit(sent + (lag if n == 1 else 0.0), 500)
        calibration.observe(
            sent_at=sent, mark=mark, full_in=reset, limit_per_minute=TPM, multiplier=1.0
        )
    assert 1.0 <= calibration.factor < 1.04
