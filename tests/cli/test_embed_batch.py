"""The batch runner with embedding lines: one request a line, or packed with ``split``
(virtual time, SimulatedProvider)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from maxllm_gate import SimulatedProvider, maxllm_gate
from maxllm_gate.batch import Batch, BatchRequest, InvalidLine, parse_request
from maxllm_gate.providers.base import ProviderCall
from maxllm_gate.testing.provider_limits import fake_vector
from tests.support import make_key

pytestmark = pytest.mark.anyio

MODEL = "sim-embedding-model"
DIMENSIONS = 4


def _line(custom_id: str, embed_input: Any, **body: Any) -> str:
    body = {"model": MODEL, "input": embed_input, "dimensions": DIMENSIONS, **body}
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body}
    )


def _records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


class _Recorder:
    """Counts each input the provider received (through its latency hook)."""

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    def __call__(self, call: ProviderCall) -> float:
        embed_input = call.input
        self.inputs += [embed_input] if isinstance(embed_input, str) else list(embed_input or [])
        return 0.2


def _client(recorder: _Recorder, **limits: Any) -> tuple[maxllm_gate, SimulatedProvider]:
    provider = SimulatedProvider(latency=recorder)
    key = make_key("k1", 600, 2_000_000, model=MODEL, **limits)
    return maxllm_gate(keys=[key], provider=provider), provider


def test_embedding_lines_and_bare_bodies_parse() -> None:
    line = parse_request(json.loads(_line("a", "hello")), 1)
    assert isinstance(line, BatchRequest) and line.embedding
    assert line.body == {"model": MODEL, "input": "hello", "dimensions": DIMENSIONS}
    bare = parse_request({"model": MODEL, "input": ["x", "y"]}, 2)
    assert isinstance(bare, BatchRequest) and bare.embedding
    chat = parse_request({"model": MODEL, "messages": "hi"}, 3)
    assert isinstance(chat, BatchRequest) and not chat.embedding
    no_input = parse_request(
        {"custom_id": "c", "url": "/v1/embeddings", "body": {"model": MODEL}}, 4
    )
    assert isinstance(no_input, InvalidLine) and "input" in no_input.reason
    other = parse_request({"custom_id": "d", "url": "/v1/completions", "body": {}}, 5)
    assert isinstance(other, InvalidLine) and "/v1/embeddings" in other.reason


async def test_each_embedding_line_is_one_request_and_one_output_line(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(
        "\n".join([_line("a", "first"), _line("b", ["x", "y"]), _line("c", [])]) + "\n"
    )
    recorder = _Recorder()
    client, provider = _client(recorder)
    async with client:
        stats = await Batch(client, source, output=output)
    records = {r["custom_id"]: r for r in _records(output)}
    assert stats.succeeded == 2 and stats.failed == 1
    body = records["b"]["response"]["body"]
    assert body["object"] == "list"
    assert [d["embedding"] for d in body["data"]] == [
        fake_vector("x", DIMENSIONS),
        fake_vector("y", DIMENSIONS),
    ]
    assert records["a"]["usage"]["prompt_tokens"] == 1
    assert records["c"]["error"]["code"] == "validation"
    assert provider.accepted == 2


async def test_split_packs_small_lines_and_writes_one_line_each(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [_line(f"id-{i}", f"chunk {i}") for i in range(25)]
    lines.append(_line("tokens", [1, 2, 3]))  # token arrays go in a pack of their own
    lines.append(_line("other-dims", "chunk 0", dimensions=8))  # and other parameters too
    source.write_text("\n".join(lines) + "\n")
    recorder = _Recorder()
    client, provider = _client(recorder, max_embedding_inputs=10)
    async with client:
        stats = await Batch(client, source, output=output, split=True)
    records = {r["custom_id"]: r for r in _records(output)}
    assert stats.succeeded == 27 and len(records) == 27
    for i in range(25):
        (vector,) = [d["embedding"] for d in records[f"id-{i}"]["response"]["body"]["data"]]
        assert vector == fake_vector(f"chunk {i}", DIMENSIONS)
    assert records["tokens"]["response"]["body"]["data"][0]["embedding"] == fake_vector(
        [1, 2, 3], DIMENSIONS
    )
    assert len(records["other-dims"]["response"]["body"]["data"][0]["embedding"]) == 8
    # 25 strings in packs of at most 10, the token array and the other dimensions alone
    assert provider.accepted == 3 + 1 + 1
    assert len(recorder.inputs) == 27


async def test_a_line_the_client_refuses_does_not_sink_its_pack(tmp_path: Path) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [_line(f"id-{i}", f"chunk {i}") for i in range(5)]
    lines.insert(2, _line("empty", ""))
    source.write_text("\n".join(lines) + "\n")
    recorder = _Recorder()
    client, _ = _client(recorder)
    async with client:
        stats = await Batch(client, source, output=output, split=True)
    records = {r["custom_id"]: r for r in _records(output)}
    assert stats.succeeded == 5 and stats.failed == 1
    assert "must not be an empty string" in records["empty"]["error"]["message"]
    assert len(recorder.inputs) == 5  # the pack was refused before sending


async def test_10000_one_line_inputs_interrupted_and_resumed_send_nothing_twice(
    tmp_path: Path,
) -> None:
    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text(
        "\n".join(_line(f"doc-{i}", f"chunk {i} of the corpus") for i in range(10_000))
    )
    recorder = _Recorder()
    client, provider = _client(recorder, max_embedding_inputs=256)
    async with client:
        seen = 0

        def stop_midway(result: object) -> None:
            nonlocal seen
            seen += 1
            if seen == 3_000:
                batch.stop()

        batch = Batch(client, source, output=output, split=True, on_result=stop_midway)
        first = await batch.run()
        assert first.stopped and 3_000 <= first.succeeded < 10_000
        written = len(_records(output))
        assert written == first.succeeded
        second = await Batch(client, source, output=output, split=True)
    assert second.skipped == written and second.failed == 0
    records = _records(output)
    ids = [r["custom_id"] for r in records]
    assert len(records) == 10_000 and len(set(ids)) == 10_000
    sample = {r["custom_id"]: r for r in records}["doc-7777"]
    (vector,) = [d["embedding"] for d in sample["response"]["body"]["data"]]
    assert vector == fake_vector("chunk 7777 of the corpus", DIMENSIONS)
    # Every input reached the provider exactly once: none sent twice, none lost.
    assert sorted(recorder.inputs) == sorted(f"chunk {i} of the corpus" for i in range(10_000))
    assert provider.duplicates == 0 and provider.rate_limited == 0
    assert anyio.current_time() > 0


def test_run_split_interrupted_by_sigint_then_resumed_sends_each_input_once(
    tmp_path: Path,
) -> None:
    """`maxllm_gate run --split` as a process, against the fake provider over HTTP."""
    import httpx

    from tests.cli.support import MODEL as FAKE_MODEL
    from tests.cli.support import fake_keys, read_output, run_command
    from tests.cli.test_run import LIMITS, _wait_for_lines

    source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"doc-{i:05d}" for i in range(10_000)]
    with source.open("w") as file:
        for i, custom_id in enumerate(ids):
            body = {"model": FAKE_MODEL, "input": f"chunk {i}", "dimensions": DIMENSIONS}
            line = {"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings"}
            file.write(json.dumps({**line, "body": body}) + "\n")
    with fake_keys(tmp_path, LIMITS) as keys:
        config = json.loads(keys.read_text())
        for key in config.values():  # 100 inputs a request: 100 requests, about 10 s
            key["models"][FAKE_MODEL]["max_embedding_inputs"] = 100
        keys.write_text(json.dumps(config))
        url = next(iter(config.values()))["api_base"]
        args = ("run", str(source), "-o", str(output), "--keys-config", str(keys), "--split")
        process = run_command(*args, "--json", cwd=tmp_path)
        _wait_for_lines(output, 2_000, process)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        first = json.loads(out)["requests"]
        assert 2_000 <= first["succeeded"] < 10_000 and first["unfinished"] > 0
        resumed = run_command(*args, "--json", cwd=tmp_path)
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        stats = httpx.get(url.removesuffix("/v1") + "/stats").json()
    second = json.loads(out)["requests"]
    assert second["skipped"] == first["succeeded"]
    assert second["succeeded"] == 10_000 - first["succeeded"]
    records, torn = read_output(output)
    assert torn == "" and sorted(r["custom_id"] for r in records) == ids
    by_id = {r["custom_id"]: r for r in records}
    (vector,) = [d["embedding"] for d in by_id["doc-04321"]["response"]["body"]["data"]]
    assert vector == pytest.approx(fake_vector("chunk 4321", DIMENSIONS))
    # The fake's own count: 2 tokens an input ("chunk", "N"), each answered exactly once.
    assert sum(s["prompt_tokens"] for s in stats.values()) == 2 * 10_000
