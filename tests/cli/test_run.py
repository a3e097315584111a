"""`maxllm_gate run` as a process against the fake provider in its own (real clock).

Killed with SIGKILL and resumed, every id ends up in the output exactly once;
SIGINT stops it cleanly. Each run here takes a few seconds of the keys' limits.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.support import MODEL, fake_keys, read_output, run_command, write_input

# 10 requests a second over both keys, in 1 s slices: 60 requests take about 5 s.
LIMITS = {"k1": (240, 1_000_000), "k2": (360, 1_000_000)}


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen[str]) -> None:
    """Wait (a few seconds at most) until the running command has written ``count`` lines."""
    deadline = time.monotonic() + 30
    while len(read_output(path)[0]) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run wrote nothing"
        time.sleep(0.05)


def _resume_completes(args: tuple[str, ...], output: Path, ids: list[str], cwd: Path) -> None:
    """Running ``args`` again finishes the file: every id in the output exactly once."""
    resumed = run_command(*args, cwd=cwd)
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    records, torn = read_output(output)
    assert torn == "" and sorted(r["custom_id"] for r in records) == ids


def test_a_mixed_file_runs_to_the_end_with_an_error_record_per_bad_line(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 12)
    with source.open("a") as file:
        file.write("{this is not json\n")
        file.write(json.dumps({"custom_id": "no-body"}) + "\n")
        file.write(json.dumps({"model": MODEL, "messages": "hello", "max_tokens": 0}) + "\n")
        file.write(json.dumps({"model": MODEL, "messages": "a bare body"}) + "\n")
    with fake_keys(tmp_path, LIMITS) as keys:
        process = run_command(
            "run",
            str(source),
            "-o",
            str(output),
            "--keys-config",
            str(keys),
            "--json",
            cwd=tmp_path,
        )
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1, err  # some requests failed
    summary = json.loads(out)
    assert summary["requests"] == {
        "succeeded": 13,
        "failed": 3,
        "invalid": 2,
        "skipped": 0,
        "skipped_failed": 0,
        "unfinished": 0,
    }
    assert summary["models"][MODEL]["requests"] == 13
    # 429s are retried, not failures; on a loaded machine, jitter may draw one over real HTTP.
    assert summary["provider_429s"] == sum(k["rate_limited"] for k in summary["keys"].values())
    records, torn = read_output(output)
    assert torn == ""
    by_id = {r["custom_id"]: r for r in records}
    assert len(by_id) == len(records) == 16
    assert all(by_id[i]["error"] is None and by_id[i]["key_id"] in LIMITS for i in ids)
    assert "not valid JSON" in by_id["line-13"]["error"]["message"]
    assert "body: must be a JSON object" in by_id["no-body"]["error"]["message"]
    assert by_id["line-15"]["error"]["code"] == "validation"
    assert by_id["line-16"]["response"]["body"]["usage"]["completion_tokens"] == 10


def test_killed_mid_run_then_resumed_every_id_appears_once(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 60)
    with fake_keys(tmp_path, LIMITS) as keys:
        args = ("run", str(source), "-o", str(output), "--keys-config", str(keys), "--json")
        process = run_command(*args, cwd=tmp_path)
        _wait_for_lines(output, 15, process)
        process.kill()
        process.communicate()
        before, torn = read_output(output)
        assert 15 <= len(before) < 60
        with output.open("a") as file:
            file.write('{"custom_id": "req-059", "respo')  # as if killed mid-write
        resumed = run_command(*args, cwd=tmp_path)
        out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["requests"]["skipped"] == len(before)
    assert summary["requests"]["succeeded"] == 60 - len(before)
    records, torn = read_output(output)
    assert torn == ""
    assert sorted(r["custom_id"] for r in records) == ids  # each exactly once
    assert all(r["error"] is None for r in records)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_drops_the_queued_finishes_the_sent_and_leaves_whole_lines(
    tmp_path: Path, signum: signal.Signals
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 60)
    with fake_keys(tmp_path, LIMITS) as keys:
        # Fewer at once than the file holds: those never read are not done either.
        args = ("run", str(source), "-o", str(output), "--keys-config", str(keys), "--json")
        process = run_command(*args, "--concurrency", "20", cwd=tmp_path)
        _wait_for_lines(output, 10, process)
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 1, err  # stopped before the end
        assert f"{signum.name}: stopping" in err
        summary = json.loads(out)
        counts = summary["requests"]
        assert summary["stopped"] and counts["unfinished"] > 0  # the queued were dropped
        assert counts["succeeded"] + counts["unfinished"] == 60
        records, torn = read_output(output)
        assert torn == "" and len(records) == counts["succeeded"]
        _resume_completes(args, output, ids, tmp_path)


def test_bad_usage_exits_2(tmp_path: Path) -> None:
    missing = run_command("run", "nowhere.jsonl", "-o", "out.jsonl", cwd=tmp_path)
    _, err = missing.communicate(timeout=30)
    assert missing.returncode == 2 and "no keys" in err
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"k": {"api_key": "sk-x", "provider": "openai", "models": {}}}))
    bad = run_command(
        "run", "in.jsonl", "-o", "out.jsonl", "--keys-config", str(keys), cwd=tmp_path
    )
    _, err = bad.communicate(timeout=30)
    assert bad.returncode == 2 and "must name at least one model" in err


def test_the_input_as_the_output_exits_2_and_leaves_the_input_alone(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source, 3)
    text = source.read_text().rstrip("\n")  # a last line with no newline: resume would cut it
    source.write_text(text)
    with fake_keys(tmp_path, LIMITS) as keys:
        process = run_command(
            "run", "in.jsonl", "-o", str(source), "--keys-config", str(keys), cwd=tmp_path
        )
        _, err = process.communicate(timeout=30)
    assert process.returncode == 2 and "is the input file" in err
    assert source.read_text() == text


def test_a_write_that_fails_mid_run_stops_with_1_and_leaves_whole_lines(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 30)
    limit = 8 * len(json.dumps({"custom_id": "req-000", "response": {"x": "y" * 400}}))

    def small_files() -> None:  # as a full disk: writes past the limit fail (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with fake_keys(tmp_path, LIMITS) as keys:
        args = ("run", str(source), "-o", str(output), "--keys-config", str(keys))
        process = run_command(*args, "--json", cwd=tmp_path, preexec_fn=small_files)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        assert f"maxllm_gate: {output}: File too large" in err and "Traceback" not in err
        summary = json.loads(out)
        assert summary["error"] and summary["stopped"]
        records, torn = read_output(output)
        assert torn == "" and 0 < len(records) < 30
        assert summary["requests"]["succeeded"] == len(records)
        _resume_completes(args, output, ids, tmp_path)


def test_bad_display_options_exit_2(tmp_path: Path) -> None:
    for interval in ("0", "-1", "nan"):
        process = run_command(
            "run", "in.jsonl", "-o", "out.jsonl", "--progress-interval", interval, cwd=tmp_path
        )
        _, err = process.communicate(timeout=30)
        assert process.returncode == 2 and "--progress-interval" in err


def test_the_input_may_come_from_a_pipe(tmp_path: Path) -> None:
    # A pipe is read once: counting its lines first would leave the run nothing.
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_input(source, 5)
    with fake_keys(tmp_path, LIMITS) as keys:
        process = run_command(
            "run",
            "/dev/stdin",
            "-o",
            str(output),
            "--keys-config",
            str(keys),
            "--json",
            cwd=tmp_path,
            stdin=subprocess.PIPE,
        )
        out, err = process.communicate(source.read_text(), timeout=60)
    assert process.returncode == 0, err
    assert json.loads(out)["requests"]["succeeded"] == 5
    records, _ = read_output(output)
    assert sorted(r["custom_id"] for r in records) == ids


def test_an_output_that_cannot_be_opened_exits_2_with_only_the_error(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source, 3)
    with fake_keys(tmp_path, LIMITS) as keys:
        for output in ("nowhere/out.jsonl", "/dev/null"):
            process = run_command(
                "run", str(source), "-o", output, "--keys-config", str(keys), cwd=tmp_path
            )
            out, err = process.communicate(timeout=30)
            assert process.returncode == 2 and out == ""
            # No progress line: nothing started.
            assert err.startswith(f"maxllm_gate: {output}: ") and err.count("\n") == 1
