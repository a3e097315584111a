"""The batch runner as a library: input parsing, whole-line output, resume, stop (virtual time)."""

from __future__ import annotations

import errno
import json
import os
import unittest.mock
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest

from maxllm_gate import BadRequestError, SimulatedProvider, maxllm_gate
from maxllm_gate.batch import (
    Batch,
    BatchRequest,
    BatchResult,
    InvalidLine,
    ResultsFile,
    parse_request,
    read_requests,
)
from tests.support import MODEL, make_key

pytestmark = pytest.mark.anyio


def _line(custom_id: str, content: str = "hi", **body: Any) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def _client(rpm: float = 600, latency: float = 0.5) -> maxllm_gate:
    return maxllm_gate(
        keys=[make_key("k1", rpm, 1_000_000)], provider=SimulatedProvider(latency=latency)
    )


def test_a_batch_line_and_a_bare_body_both_parse() -> None:
    batch = parse_request(json.loads(_line("a", max_tokens=5)), 1)
    assert batch == BatchRequest(
        "a",
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        None,
        1,
    )
    bare = parse_request({"model": MODEL, "messages": "hi", "priority": "high"}, 7)
    assert isinstance(bare, BatchRequest)
    assert (bare.custom_id, bare.priority, dict(bare.body)) == (
        "line-7",
        "high",
        {"model": MODEL, "messages": "hi"},
    )


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([1, 2], "expected a JSON object"),
        ({"custom_id": "", "body": {}}, "custom_id"),
        ({"custom_id": "x", "body": "text"}, "body: must be a JSON object"),
        ({"custom_id": "x", "method": "GET", "body": {"model": MODEL, "messages": []}}, "method"),
        (
            {"custom_id": "x", "url": "/v1/completions", "body": {"model": MODEL, "messages": []}},
            "url",
        ),
        (
            {"custom_id": "x", "url": "/v1/embeddings", "body": {"model": MODEL, "messages": []}},
            "needs a model (a string) and input",
        ),
        ({"custom_id": "x", "body": {"messages": []}}, "needs a model"),
        ({"model": MODEL, "messages": "hi", "stream": True}, "does not stream"),
        ({"model": MODEL, "messages": "hi", "api_base": "http://elsewhere"}, "api_base: not"),
        # The response keeps one choice: the others would be paid for and lost.
        ({"model": MODEL, "messages": "hi", "n": 3}, "n: a batch keeps one choice"),
    ],
)
def test_a_malformed_line_says_why(data: Any, reason: str) -> None:
    parsed = parse_request(data, 3)
    assert isinstance(parsed, InvalidLine)
    assert reason in parsed.reason


def test_reading_a_file_reports_bad_json_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(_line("a") + "\n\n{not json\n" + _line("b") + "\n")
    items = list(read_requests(path))
    assert [(type(i).__name__, i.custom_id, i.line) for i in items] == [
        ("BatchRequest", "a", 1),
        ("InvalidLine", "line-3", 3),
        ("BatchRequest", "b", 4),
    ]


async def test_each_result_is_one_whole_line_and_bad_lines_become_error_records(
    tmp_path: Path,
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [_line(f"r{i}", max_tokens=10) for i in range(5)]
    lines += [
        "{oops",
        _line("r0"),
        _line("bad-temp", temperature=7),
        json.dumps({"model": MODEL, "messages": "bare"}),
    ]
    source.write_text("\n".join(lines) + "\n")
    async with _client() as client:
        stats = await Batch(client, source, output=output)
    records = {r["custom_id"]: r for r in _records(output)}
    assert len(records) == len(_records(output)) == 9
    assert (stats.succeeded, stats.failed, stats.invalid) == (6, 3, 2)
    ok = records["r3"]
    assert ok["error"] is None and ok["key_id"] == "k1" and ok["usage"]["completion_tokens"] == 10
    assert ok["response"]["body"]["choices"][0]["message"]["role"] == "assistant"
    assert records["line-6"]["error"]["code"] == "invalid_line"
    assert "not valid JSON" in records["line-6"]["error"]["message"]
    assert "duplicate custom_id 'r0' (first on line 1)" in records["line-7"]["error"]["message"]
    assert records["bad-temp"]["error"]["code"] == "validation"
    assert records["line-9"]["error"] is None


async def test_a_second_run_skips_what_the_output_holds_and_drops_a_torn_last_line(
    tmp_path: Path,
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(_line(f"r{i}") + "\n" for i in range(6)))
    async with _client(rpm=60) as client:  # one a second: they finish one by one
        first = Batch(client, source, output=output)
        async with first as results:
            async for result in results:
                if result.custom_id == "r2":
                    break  # leaving the block cancels the rest
    done = [r["custom_id"] for r in _records(output)]
    assert "r2" in done and len(done) < 6
    with output.open("a") as file:
        file.write('{"custom_id": "r5", "resp')  # a write cut short by a kill
    async with _client() as client:
        stats = await Batch(client, source, output=output)
    ids = [r["custom_id"] for r in _records(output)]
    assert sorted(ids) == [f"r{i}" for i in range(6)]
    assert stats.skipped == len(done) and stats.succeeded == 6 - len(done)


async def test_stop_drops_the_queued_and_lets_those_at_the_provider_finish(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.jsonl"
    requests = [{"model": MODEL, "messages": f"hi {i}"} for i in range(20)]
    async with _client(rpm=60, latency=2.0) as client:
        batch = Batch(client, requests, output=output, concurrency=4)

        def stop_after_three(result: BatchResult) -> None:
            if batch.stats.done == 3:
                batch.stop()

        batch._on_result = stop_after_three
        stats = await batch
    assert stats.stopped
    # At the stop: one call at the provider (60 RPM, 2 s each), the rest of the 4 queued.
    assert stats.succeeded == 4 and stats.unfinished == 2
    assert len(_records(output)) == stats.succeeded


async def test_on_result_may_be_async_and_sees_every_result_once() -> None:
    seen: list[str] = []

    async def record(result: BatchResult) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(result.custom_id)

    async with _client() as client:
        await Batch(client, [{"model": MODEL, "messages": "x"}] * 3, on_result=record)
    assert sorted(seen) == ["line-1", "line-2", "line-3"]


def test_a_second_writer_of_the_same_output_is_refused(tmp_path: Path) -> None:
    first, second = ResultsFile(tmp_path / "out.jsonl"), ResultsFile(tmp_path / "out.jsonl")
    first.open()
    try:
        with pytest.raises(OSError) as caught:
            second.open()
        assert caught.value.errno == errno.EBUSY
    finally:
        first.close()


async def test_retry_failed_takes_the_error_lines_out_and_runs_them_again(tmp_path: Path) -> None:
    output = tmp_path / "out.jsonl"
    requests = [
        {"custom_id": f"r{i}", "body": {"model": MODEL, "messages": "hi"}} for i in range(4)
    ]
    provider = SimulatedProvider(latency=0.1)
    provider.inject(BadRequestError("no", status_code=400), times=2)
    async with maxllm_gate(keys=[make_key("k1", 600, 1_000_000)], provider=provider) as client:
        first = await Batch(client, requests, output=output)
    assert (first.succeeded, first.failed) == (2, 2)
    async with _client() as client:
        again = await Batch(client, requests, output=output, retry_failed=True)
    assert (again.skipped, again.succeeded, again.failed) == (2, 2, 0)
    records = _records(output)
    assert sorted(r["custom_id"] for r in records) == ["r0", "r1", "r2", "r3"]
    assert all(r["error"] is None for r in records)


def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    # Resume reads the output back: a pipe would block that read, /dev/zero never end it.
    for path in ("/dev/null", "/dev/zero"):
        with pytest.raises(OSError) as caught:
            ResultsFile(path).open()
        assert caught.value.filename == path and "regular file" in str(caught.value)


def test_a_failed_write_leaves_no_torn_line(tmp_path: Path) -> None:
    results = ResultsFile(tmp_path / "out.jsonl")
    results.open()
    results.append({"custom_id": "a"})
    writes: list[int] = []
    real_write = os.write

    def short_then_full(fd: int, data: bytes) -> int:
        writes.append(len(data))
        if len(writes) == 1:
            return real_write(fd, data[:5])  # a short write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    with unittest.mock.patch("os.write", short_then_full), pytest.raises(OSError) as caught:
        results.append({"custom_id": "b"})
    results.close()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == results.path
    assert (tmp_path / "out.jsonl").read_text() == '{"custom_id": "a"}\n'


async def test_a_failed_write_stops_the_batch_and_raises_the_error_unwrapped(
    tmp_path: Path,
) -> None:
    output = tmp_path / "out.jsonl"
    requests = [{"model": MODEL, "messages": f"hi {i}"} for i in range(10)]
    real_append = ResultsFile.append

    def append(self: ResultsFile, record: Any) -> None:
        if record["custom_id"] == "line-3":
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        real_append(self, record)

    with unittest.mock.patch.object(ResultsFile, "append", append):
        async with _client(rpm=60) as client:
            batch = Batch(client, requests, output=output)
            with pytest.raises(OSError) as caught:
                await batch
            assert caught.value.errno == errno.ENOSPC
            assert batch.stats.stopped and batch.stats.succeeded == 2
            with pytest.raises(OSError):  # the same from the iterator form
                async with Batch(client, requests[3:], output=tmp_path / "b.jsonl") as results:
                    async for _ in results:
                        pass
    assert [r["custom_id"] for r in _records(output)] == ["line-1", "line-2"]


async def test_the_input_file_as_the_output_is_refused_and_left_alone(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    text = _line("a") + "\n" + _line("b")  # no newline at the end: a resume would cut it
    source.write_text(text)
    link = tmp_path / "link.jsonl"
    link.hardlink_to(source)
    async with _client() as client:
        with pytest.raises(OSError) as caught:
            await Batch(client, source, output=source)
        with pytest.raises(OSError):
            await Batch(client, str(source), output=link)
    assert "input" in str(caught.value)
    assert source.read_text() == text


async def test_the_bound_allows_for_requests_larger_than_a_bucket() -> None:
    # 60,000 TPM in 1 s slices holds 1,000 tokens: each request is admitted only into a
    # full bucket and leaves a debt. The last one's debt is never waited out, so a bound
    # that counted it would be longer than the run (an efficiency above 1).
    from maxllm_gate.cli.summary import build_summary

    key = make_key("k1", 600, 60_000)
    requests = [{"model": MODEL, "messages": "x " * 10_000, "max_tokens": 10} for _ in range(3)]
    async with maxllm_gate(keys=[key], provider=SimulatedProvider(latency=0.5)) as client:
        stats = await Batch(client, requests)
        summary = build_summary(stats, client.config, client.status())
    assert stats.succeeded == 3 and summary["provider_429s"] == 0
    assert 0 < summary["bound"] < summary["elapsed"]
    assert 0.8 < summary["efficiency"] <= 1


class _DatedModels(SimulatedProvider):
    """Answers with a dated snapshot's name, as OpenAI does (gpt-4o-mini-2024-07-18)."""

    async def complete(self, call: Any) -> Any:
        response = await super().complete(call)
        return attrs.evolve(response, model=f"{response.model}-2024-07-18")


async def test_usage_is_counted_under_the_model_asked_for_not_the_one_that_answered() -> None:
    # The keys' limits (for the bound) are under the name asked for.
    from maxllm_gate.cli.summary import build_summary

    requests = [{"model": MODEL, "messages": "hi", "max_tokens": 10} for _ in range(30)]
    keys = [make_key("k1", 60, 1_000_000)]
    async with maxllm_gate(keys=keys, provider=_DatedModels(latency=0.5)) as client:
        stats = await Batch(client, requests)
        summary = build_summary(stats, client.config, client.status())
    assert list(summary["models"]) == [MODEL]
    assert summary["bound"] > 0 and summary["efficiency"] is not None


async def test_max_completion_tokens_is_sent_as_the_one_limit() -> None:
    # OpenAI refuses a call that sets both ("Setting 'max_tokens' and
    # 'max_completion_tokens' at the same time is not supported"), and the client
    # always sends max_tokens.
    sent: list[dict[str, Any]] = []

    def completion(call: Any) -> int:
        sent.append(dict(call.params))
        return 5

    request = {"model": MODEL, "messages": "hi", "max_completion_tokens": 42}
    provider = SimulatedProvider(completion_tokens=completion)
    async with maxllm_gate(keys=[make_key("k1", 600, 1_000_000)], provider=provider) as client:
        stats = await Batch(client, [request])
    assert stats.succeeded == 1
    [params] = sent
    assert params["max_tokens"] == 42 and "max_completion_tokens" not in params
