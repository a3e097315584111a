from __future__ import annotations

import bisect

import pytest

from maxllm_gate.limits import BucketPair, Cost, GcraCell, LimitSpec


def test_a_full_cell_admits_its_capacity_then_refills_continuously() -> None:
    cell = GcraCell(limit_per_minute=60, capacity=3)  # 1 unit per second
    assert [cell.reserve(0.0, 1) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert cell.reserve(0.0, 1) == pytest.approx(1.0)
    assert cell.reserve(0.5, 1) == pytest.approx(1.0)
    assert cell.reserve(1.0, 1) == 1.0


def test_a_refused_reservation_changes_nothing() -> None:
    cell = GcraCell(limit_per_minute=60, capacity=2)
    cell.reserve(0.0, 2)
    tat = cell.tat
    assert cell.reserve(0.0, 1) > 0.0
    assert cell.tat == tat


def test_fits_at_is_exact_for_weighted_costs() -> None:
    cell = GcraCell(limit_per_minute=6000, capacity=100)  # 100 units per second
    assert cell.reserve(0.0, 100) == 0.0
    assert cell.fits_at(0.0, 40) == pytest.approx(0.4)
    assert cell.reserve(0.4, 40) == 0.4


def test_a_request_larger_than_the_capacity_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    cell = GcraCell(limit_per_minute=60, capacity=2)
    assert cell.reserve(0.0, 5) == 0.0  # full: admitted, 3 units of debt
    assert cell.available(0.0) == 0.0
    assert cell.fits_at(0.0, 1) == pytest.approx(4.0)  # 5 s to refill 5 units, 1 needs 1 of them
    assert cell.fits_at(0.0, 5) == pytest.approx(5.0)


def test_refund_gives_back_capacity_but_never_more_than_full() -> None:
    cell = GcraCell(limit_per_minute=60, capacity=10)
    cell.reserve(0.0, 10)
    cell.refund(0.0, 4)
    assert cell.available(0.0) == pytest.approx(4.0)
    cell.refund(0.0, 100)
    assert cell.available(0.0) == pytest.approx(10.0)


def test_limit_remaining_only_ever_lowers_availability() -> None:
    cell = GcraCell(limit_per_minute=60, capacity=10)
    cell.limit_remaining(0.0, 3)
    assert cell.available(0.0) == pytest.approx(3.0)
    cell.limit_remaining(0.0, 8)  # a stale, more generous report is ignored
    assert cell.available(0.0) == pytest.approx(3.0)


def test_the_pair_reserves_both_cells_or_neither() -> None:
    pair = BucketPair(LimitSpec.from_limits(rpm_limit=60, tpm_limit=600, burst_seconds=1.0))
    assert pair.spec.rpm_capacity == 1.0 and pair.spec.tpm_capacity == 10.0
    assert pair.reserve(0.0, Cost(tokens=5)) == 0.0
    before = (pair.requests.tat, pair.tokens.tat)
    assert pair.reserve(0.0, Cost(tokens=1)) == pytest.approx(1.0)  # RPM is the short one
    assert (pair.requests.tat, pair.tokens.tat) == before


def test_a_cooldown_blocks_the_pair_until_it_ends() -> None:
    pair = BucketPair(LimitSpec.from_limits(rpm_limit=600, tpm_limit=60000, burst_seconds=1.0))
    pair.cool_down(7.5)
    assert pair.reserve(0.0, Cost(tokens=1)) == 7.5
    assert pair.snapshot(0.0).utilization == 1.0
    assert pair.reserve(7.5, Cost(tokens=1)) == 7.5


def test_default_burst_is_one_second_of_the_limit_and_at_least_one_unit() -> None:
    spec = LimitSpec.from_limits(rpm_limit=30, tpm_limit=90000, burst_seconds=1.0)
    assert spec.rpm_capacity == 1.0
    assert spec.tpm_capacity == 1500.0


@pytest.mark.parametrize("limit", [1, 7, 60, 600, 90000])
def test_over_any_window_a_cell_admits_at_most_capacity_plus_refill(limit: int) -> None:
    cell = GcraCell(limit_per_minute=limit, capacity=max(1.0, limit / 60))
    admitted: list[float] = []
    t = 0.0
    while t < 120.0:
        if cell.reserve(t, 1) == t:
            admitted.append(t)
        t += 0.01
    for i, start in enumerate(admitted):
        in_window = bisect.bisect_left(admitted, start + 60.0) - i
        assert in_window <= cell.capacity + limit + 1e-9


def test_over_reserved_units_come_back_while_the_bucket_stays_in_debt() -> None:
    cell = GcraCell(limit_per_minute=60, capacity=10)
    cell.charge(0.0, 8, phantom=2)  # the provider charged 6
    assert cell.release(0.0, 2) == 2
    assert cell.available(0.0) == pytest.approx(4.0)


def test_over_reserved_units_are_forfeited_once_the_provider_bucket_must_have_filled() -> None:
    cell = GcraCell(limit_per_minute=60, capacity=10)  # 1 unit/s
    cell.charge(0.0, 10, phantom=4)  # ours: 10 units of debt; the provider's: 6
    # At t=7 ours holds 3 units of debt, the provider's has been full for a second:
    # the refill it wasted there cannot be given back.
    assert cell.release(7.0, 4) == pytest.approx(3.0)
    assert cell.available(7.0) == pytest.approx(10.0)


def test_a_charge_after_the_provider_filled_caps_the_phantom() -> None:
    cell = GcraCell(limit_per_minute=60, capacity=10)
    cell.charge(0.0, 5, phantom=5)  # the provider charged nothing
    cell.charge(6.0, 5)  # ours was full by then, and the provider's long before
    assert cell.release(6.0, 5) == 0.0
    assert cell.available(6.0) == pytest.approx(5.0)
