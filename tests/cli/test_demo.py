"""`maxllm_gate demo`: offline, no keys, zero 429s, close to the bound (as CI runs it)."""

from __future__ import annotations

import json

import pytest

from maxllm_gate.cli import main


def test_the_demo_report_shows_no_429s_and_the_bound(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "maxllm_gate demo: simulated provider, 3 keys, quantized (1 s) enforcement"
    assert lines[1] == "requests        300 (0 failed)"
    assert lines[2] == "provider 429s   0"
    assert lines[3].startswith("makespan ") and lines[4].startswith("bound ")
    assert float(lines[5].split()[1]) > 0.9  # efficiency
    assert [line.split()[0] for line in lines[6:]] == ["key-small", "key-medium", "key-large"]
    # Not a terminal: the progress comes as plain lines on stderr, the last one complete.
    assert err.splitlines()[-1].startswith("[0:")
    assert "done 300/300 (0 failed)" in err.splitlines()[-1]


def test_the_demo_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--requests", "60", "--json", "--progress", "off"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert err == ""
    assert report["requests"] == 60 and report["failed"] == 0 and report["provider_429s"] == 0
    assert report["makespan"] >= report["bound"] > 0
    assert sum(k["requests"] for k in report["keys"].values()) == 60


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--requests", "0"]) == 2
    assert "--requests must be at least 1" in capsys.readouterr().err


def test_a_demo_within_the_first_burst_has_no_efficiency(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The limits set no bound on what fits in the buckets' first burst: 0 s, not 0.000.
    assert main(["demo", "--requests", "2", "--progress", "off"]) == 0
    out = capsys.readouterr().out
    assert "bound           0.0 s" in out
    assert "efficiency      - (the requests fit in the keys' first burst)" in out
