"""The arithmetic and the page writing of bench/compare.py (the runs themselves are a
benchmark, not a test: `python bench/compare.py`)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Any

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "bench" / "compare.py"


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compare", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_compare"] = module  # attrs resolves the classes' module
    spec.loader.exec_module(module)
    return module


def _result(latencies: list[float | None], makespan: float, **failures: int) -> dict[str, Any]:
    return {
        "makespan": makespan,
        "latencies": latencies,
        "priorities": ["medium"] * len(latencies),
        "failures": failures,
        "provider": {"calls": len(latencies), "accepted": 0, "rate_limited": 2},
        "cpu_seconds": 1.0,
        "versions": {},
    }


def test_the_workload_is_the_same_every_time_and_scales(compare: ModuleType) -> None:
    strict = compare.SCENARIOS["strict"]
    assert strict.workload(1.0) == strict.workload(1.0)
    assert len(strict.workload(0.5)) == strict.requests // 2


def test_high_priority_requests_arrive_one_by_one(compare: ModuleType) -> None:
    work = compare.SCENARIOS["priority"].workload(1.0)
    high = [r["at"] for r in work if r["priority"] == "high"]
    assert len(high) == 30
    assert high == sorted(high) and high[1] - high[0] == pytest.approx(0.5)
    assert {r["priority"] for r in work if r["at"] == 0.0} == {"low"}


def test_efficiency_counts_only_the_work_that_succeeded(compare: ModuleType) -> None:
    scenario = compare.SCENARIOS["strict"]
    work = scenario.workload(0.2)  # 120 requests; the burst holds 30
    everything = compare.summarize(_result([1.0] * 120, 10.0), scenario, work)
    half = compare.summarize(
        _result([1.0] * 60 + [None] * 60, 10.0, RateLimitError=60), scenario, work
    )
    assert everything["failures"] == 0 and half["failures"] == 60
    assert half["bound"] < everything["bound"]
    assert half["efficiency"] == pytest.approx(half["bound"] / 10.0)
    assert everything["rate_limited"] == 2


def test_a_peer_that_wins_without_failures_is_named(compare: ModuleType) -> None:
    row = {"efficiency": 0.9, "p50": 1.0, "p99": 2.0, "high_p99": None, "failures": 0}
    results = {
        "lenient": {
            "gate-native": row,
            "cookbook": {**row, "efficiency": 0.95},
            "naive": {**row, "efficiency": 0.99, "failures": 3},  # fast by failing
        }
    }
    wins = compare.peer_wins(results)
    assert len(wins) == 1
    assert "OpenAI cookbook" in wins[0] and "higher efficiency" in wins[0]


def test_the_page_keeps_what_was_written_by_hand(
    compare: ModuleType, tmp_path: pathlib.Path
) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\n\nBy hand.\n\n{compare.BEGIN}\nold\n{compare.END}\n\nAfter.\n")
    compare.write_page(page, f"{compare.BEGIN}\nnew\n{compare.END}")
    text = page.read_text()
    assert "By hand." in text and "After." in text
    assert "new" in text and "old" not in text


def test_a_missing_page_is_created(compare: ModuleType, tmp_path: pathlib.Path) -> None:
    page = tmp_path / "benchmarks.md"
    compare.write_page(page, f"{compare.BEGIN}\nnew\n{compare.END}")
    assert page.read_text().startswith("# Benchmarks")
