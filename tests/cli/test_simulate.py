"""`maxllm_gate simulate`: virtual time predicts a real run on the fake provider within 10%."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

import maxllm_gate.tokens as tokens
from maxllm_gate.cli import main
from maxllm_gate.cli._common import UsageError
from maxllm_gate.cli.simulate import parse_distribution
from tests.cli.support import LATENCY, fake_keys, run_command, write_input

# Tokens bind here (27,000 TPM over both keys, 1 s slices): 50 requests take about 6 s.
LIMITS = {"k1": (600, 9_000), "k2": (600, 18_000)}


def test_the_prediction_is_within_10_percent_of_a_real_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(source, 50, seed=7)
    with fake_keys(tmp_path, LIMITS) as keys:
        args = ["--keys-config", str(keys), "--env-file", ""]
        assert (
            main(["simulate", "--input", str(source), "--latency", str(LATENCY), "--json", *args])
            == 0
        )
        predicted = json.loads(capsys.readouterr().out)
        process = run_command("run", str(source), "-o", str(output), "--json", *args, cwd=tmp_path)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    real = json.loads(out)
    assert predicted["provider_429s"] == 0 and predicted["failed"] == 0
    assert predicted["makespan"] > 4  # long enough for the limits, not the latency, to rule
    assert abs(predicted["makespan"] - real["elapsed"]) <= 0.10 * real["elapsed"], (predicted, real)


def test_a_generated_workload_reports_keys_waits_by_priority_and_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = {
        name: {"api_key": f"sk-{name}-0000", "provider": "openai", "models": {"m": limits}}
        for name, limits in {
            "small": {"rpm_limit": 60, "tpm_limit": 20_000},
            "large": {"rpm_limit": 300, "tpm_limit": 90_000},
        }.items()
    }
    plot = tmp_path / "sim.png"
    code = main(
        [
            "simulate",
            "--keys-config",
            json.dumps(keys),
            "--requests",
            "600",
            "--prompt-tokens",
            "100-400",
            "--completion-tokens",
            "normal:150,40",
            "--arrival",
            "poisson:4",
            "--priority-mix",
            "high=1,low=4",
            "--plot",
            str(plot),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "(0 failed, 0 provider 429s)" in out
    assert "makespan" in out and "small" in out and "large" in out
    high = next(line for line in out.splitlines() if line.strip().startswith("high"))
    low = next(line for line in out.splitlines() if line.strip().startswith("low"))
    assert float(high.split()[2]) < float(low.split()[2])  # high waits less, on average
    assert plot.read_bytes().startswith(b"\x89PNG")


# 1 and 2 requests a second; 1 s slices at the provider, as OpenAI's.
THIRD_KEYS = {
    name: {
        "api_key": f"sk-sim-{name}-0000",
        "provider": "openai",
        "models": {"gpt-4o-mini": {"rpm_limit": rpm, "tpm_limit": tpm}},
    }
    for name, rpm, tpm in (("a", 60, 100_000), ("b", 120, 200_000))
}


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No tokenizer loaded yet; records each worker thread started."""
    monkeypatch.setattr(tokens, "_loaded", {})
    started: list[str] = []
    real = anyio.to_thread.run_sync

    async def recording(func: Any, *args: Any, **kwargs: Any) -> Any:
        started.append(getattr(func, "__name__", repr(func)))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording)
    return started


def _simulate_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    keys = json.dumps(THIRD_KEYS)
    assert main(["simulate", "--keys-config", keys, "--env-file", "", "--json", *args]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_at_a_third_of_capacity_no_request_waits_and_no_tokenizer_loads(
    backend: str, threads: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # A tokenizer loading in a worker thread mid-run let the virtual clock jump ahead
    # meanwhile; the calls that waited for it then reached the provider together
    # (0 to 25 429s, waits up to minutes, from run to run).
    report = _simulate_json(
        capsys, "--requests", "300", "--arrival", "rate:1", "--latency", "0.5", "--backend", backend
    )
    assert report["provider_429s"] == 0 and report["failed"] == 0
    assert report["queue_wait"]["medium"]["max"] == 0
    assert report["makespan"] == 299.5
    assert threads == []  # generated prompts are counted without a tokenizer


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_generated_prompts_are_reserved_and_charged_as_their_size(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _simulate_json(
        capsys,
        "--requests",
        "60",
        "--prompt-tokens",
        "200",
        "--completion-tokens",
        "100",
        "--backend",
        backend,
    )
    # The provider's limiter charged, per request, its 800 characters / 4 and max_tokens.
    charged = sum(key["tokens"] for key in report["keys"].values())
    assert charged == 60 * (200 + 100)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_batch_files_tokenizer_loads_before_the_clock_starts(
    backend: str, tmp_path: Path, threads: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word " * 150}]}
    ] * 200
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = _simulate_json(
        capsys, "--input", str(source), "--arrival", "rate:1", "--backend", backend
    )
    assert report["provider_429s"] == 0
    assert report["queue_wait"]["medium"]["max"] == 0
    assert report["makespan"] == 200.0  # the last arrives at 199 s, answered 1 s later
    assert "_load_encoding" in threads  # it was not loaded already


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_same_seed_gives_the_same_report(
    backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # trio shuffles the tasks it wakes together: the seed seeds that shuffle too.
    args = ("--requests", "400", "--prompt-tokens", "100-3000", "--arrival", "poisson:6")
    args += ("--latency", "0.2-2", "--priority-mix", "high=1,low=3", "--seed", "3")
    args += ("--backend", backend)
    first = _simulate_json(capsys, *args)
    assert first["keys"]["a"]["requests"] > 0 and first["queue_wait"]["low"]["max"] > 0
    assert _simulate_json(capsys, *args) == first


def test_a_long_span_is_sampled_at_most_a_thousand_times(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 100 requests, one every 100 s: 9,900 s, sampled every 10 s (not 9,900 times).
    report = _simulate_json(capsys, "--requests", "100", "--arrival", "rate:0.01")
    times = [t for t, _, _ in report["samples"]]
    assert report["makespan"] == 9901.0
    assert times[:3] == [0, 10, 20] and len(times) == 992  # 0..9900, then the end
    assert report["samples"][-1] == [9901.0, 100, 0]


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [("200", 200, 200), ("100-400", 100, 400), ("normal:300,1", 290, 310), ("exp:50", 0, 2000)],
)
def test_distributions(text: str, low: float, high: float) -> None:
    sample = parse_distribution(text)
    rng = random.Random(1)
    assert all(low <= sample(rng) <= high for _ in range(100))


def test_a_bad_distribution_names_the_forms() -> None:
    with pytest.raises(UsageError, match="100-400"):
        parse_distribution("lots")
