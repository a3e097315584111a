"""Token estimation: exact with tiktoken once prepared, heuristic otherwise, never online.

Async tests run under asyncio and trio through the shared ``anyio_backend`` fixture in
``tests/conftest.py`` (virtual time; the worker threads still take real time).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import maxllm_gate.tokens as tokens
from maxllm_gate.errors import ConfigError
from maxllm_gate.tokens import IMAGE_TOKENS, TokenEstimator, heuristic_tokens

SRC = Path(tokens.__file__).resolve().parents[1]
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Explain quantum computing in one sentence, please."},
]


@pytest.fixture(autouse=True)
def _no_user_cache_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with TIKTOKEN_CACHE_DIR unset, and gets the old value back after."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "placeholder")  # records the original for undo
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    monkeypatch.setattr(tokens, "_loaded", {})  # nothing loaded by earlier tests
    yield


def heuristic_raw(messages: list[dict[str, Any]]) -> int:
    return 3 + sum(3 + sum(heuristic_tokens(v) for v in m.values()) for m in messages)


def tiktoken_raw(encoding_name: str, messages: list[dict[str, Any]]) -> int:
    """The count by tiktoken's own loader (the autouse fixture restores the variable)."""
    import tiktoken

    os.environ["TIKTOKEN_CACHE_DIR"] = str(tokens._litellm_tokenizers_dir())

    encoding = tiktoken.get_encoding(encoding_name)
    return 3 + sum(3 + sum(len(encoding.encode(v)) for v in m.values()) for m in messages)


def spy(monkeypatch: pytest.MonkeyPatch, name: str, delay: float = 0.0) -> list[str]:
    """Record each call of tokens.<name> (run in a worker thread), optionally slowed down."""
    calls: list[str] = []
    real: Callable[[str], Any] = getattr(tokens, name)

    def wrapper(arg: str) -> Any:
        calls.append(arg)
        time.sleep(delay)
        return real(arg)

    monkeypatch.setattr(tokens, name, wrapper)
    return calls


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("TIKTOKEN_CACHE_DIR", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- the heuristic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)]
)
def test_heuristic_is_chars_over_four_rounded_up(text: str, expected: int) -> None:
    assert heuristic_tokens(text) == expected


def test_estimate_before_prepare_uses_the_heuristic() -> None:
    estimator = TokenEstimator(buffer=1.0)
    assert estimator.encoding_name("gpt-4o-mini") is None
    assert estimator.estimate_prompt("gpt-4o-mini", MESSAGES) == heuristic_raw(MESSAGES)
    assert estimator.count_text("gpt-4o-mini", "hello world!") == 3


def test_buffer_is_applied_and_rounded_up() -> None:
    messages = [{"role": "user", "content": "abcdefghi"}]  # raw: 3 + 3 + 1 + 3 = 10
    assert TokenEstimator(buffer=1.0).estimate_prompt("m", messages) == 10
    # 10 * 1.1 is 11.000000000000002 in floats: still 11, not 12.
    assert TokenEstimator(buffer=1.1).estimate_prompt("m", messages) == 11
    assert TokenEstimator(buffer=1.25).estimate_prompt("m", messages) == 13  # 12.5 -> 13
    assert TokenEstimator().buffer == 1.1


@pytest.mark.parametrize("buffer", [0, -1.0, float("nan"), float("inf"), "1.1", True])
def test_bad_buffer(buffer: Any) -> None:
    with pytest.raises(ConfigError, match="buffer"):
        TokenEstimator(buffer=buffer)


def test_recipe_names_images_tool_calls_and_tools() -> None:
    estimator = TokenEstimator(buffer=1.0)
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "hi", "name": "ann"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 9999}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [call]},
    ]
    as_json = json.dumps([call], separators=(",", ":"))
    expected = (
        3
        + (3 + 1 + 1 + 1 + 1)  # role, content, name, +1 for the name
        + (3 + 1 + heuristic_tokens("what is this?") + IMAGE_TOKENS)
        + (3 + heuristic_tokens("assistant") + heuristic_tokens(as_json))
    )
    assert estimator.estimate_prompt("m", messages) == expected
    with_tools = estimator.estimate_prompt("m", messages, tools=tools)
    assert with_tools == expected + heuristic_tokens(json.dumps(tools, separators=(",", ":")))


def test_estimate_accepts_chat_message_objects() -> None:
    from maxllm_gate.validation import validate_chat_request

    request = validate_chat_request("gpt-4o", MESSAGES)
    estimator = TokenEstimator()
    by_object = estimator.estimate_prompt("gpt-4o", request.messages)  # type: ignore[arg-type]
    assert by_object == estimator.estimate_prompt("gpt-4o", request.message_dicts())


def test_odd_contents_never_raise() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [None, 3, "text", {"type": "input_audio", "data": "x"}]},
        {"role": "user", "content": {"weird": object()}},
    ]
    assert TokenEstimator().estimate_prompt("m", messages) > 0


# --- prepare -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_prepared_estimate_matches_tiktoken_exactly() -> None:
    estimator = TokenEstimator(buffer=1.0)
    await estimator.prepare("gpt-4o-mini")
    assert estimator.encoding_name("gpt-4o-mini") == "o200k_base"
    raw = tiktoken_raw("o200k_base", MESSAGES)
    assert estimator.estimate_prompt("gpt-4o-mini", MESSAGES) == raw
    assert raw != heuristic_raw(MESSAGES)  # so the test can tell the two apart

    buffered = TokenEstimator(buffer=1.1)
    await buffered.prepare("gpt-4o-mini")
    assert buffered.estimate_prompt("gpt-4o-mini", MESSAGES) == math.ceil(round(raw * 1.1, 6))


@pytest.mark.anyio
async def test_count_text_uses_the_encoding_without_buffer() -> None:
    import tiktoken

    estimator = TokenEstimator(buffer=2.0)
    await estimator.prepare("gpt-4o")
    text = "Streaming tokens, one <|endoftext|> at a time."
    expected = len(tiktoken.get_encoding("o200k_base").encode(text, disallowed_special=()))
    assert estimator.count_text("gpt-4o", text) == expected


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("openrouter/openai/gpt-4o-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("text-davinci-003", "p50k_base"),
        # Known to tiktoken, but LiteLLM ships no r50k_base file: never downloaded.
        ("text-davinci-001", None),
        ("llama-3.1-70b-versatile", None),
        ("sim-model", None),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", None),
    ],
)
async def test_model_to_encoding(model: str, encoding: str | None) -> None:
    estimator = TokenEstimator(buffer=1.0)
    await estimator.prepare(model)
    assert estimator.encoding_name(model) == encoding
    if encoding is None:
        assert estimator.estimate_prompt(model, MESSAGES) == heuristic_raw(MESSAGES)
        assert estimator.count_text(model, "abcdefgh") == 2


@pytest.mark.anyio
async def test_prepare_reads_litellms_files_and_leaves_the_environment_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[str] = []
    real_open = open

    def spy_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy_open)
    environ = dict(os.environ)
    await TokenEstimator().prepare("gpt-4o-mini")
    assert dict(os.environ) == environ  # no TIKTOKEN_CACHE_DIR, nothing else either
    assert any(
        Path(p).parts[-4:-1] == ("litellm", "litellm_core_utils", "tokenizers") for p in opened
    )


@pytest.mark.anyio
async def test_a_users_cache_dir_is_read_first_and_never_downloaded_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tiktoken.load

    fetched: list[str] = []

    def no_download(blobpath: str) -> bytes:
        fetched.append(blobpath)
        raise OSError(f"tiktoken tried to fetch {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # empty: nothing cached
    assert tokens._cache_dirs()[0] == str(tmp_path)
    estimator = TokenEstimator()
    await estimator.prepare("gpt-4o-mini")
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(tmp_path)
    assert estimator.encoding_name("gpt-4o-mini") == "o200k_base"  # LiteLLM's copy, then
    assert fetched == [] and not os.listdir(tmp_path)  # nothing written there either


@pytest.mark.anyio
async def test_a_corrupt_cache_file_is_neither_used_nor_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    corrupt = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    corrupt.write_bytes(b"not a vocabulary")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokens, "_litellm_tokenizers_dir", lambda: None)
    monkeypatch.setattr(tokens.tempfile, "gettempdir", lambda: str(tmp_path / "none"))
    estimator = TokenEstimator()
    await estimator.prepare("gpt-4o")
    assert estimator.encoding_name("gpt-4o") is None
    assert corrupt.read_bytes() == b"not a vocabulary"  # tiktoken would have deleted it


def test_prepare_never_touches_the_network() -> None:
    # A fresh interpreter: nothing cached in tiktoken's registry, TIKTOKEN_CACHE_DIR unset.
    result = run_python(
        """
        import os, socket, sys
        import anyio

        attempts = []

        def offline(*args, **kwargs):
            attempts.append(args)
            raise OSError("network access attempted")

        socket.socket.connect = offline
        socket.create_connection = offline
        socket.getaddrinfo = offline

        from maxllm_gate.tokens import TokenEstimator

        async def main() -> None:
            estimator = TokenEstimator(buffer=1.0)
            await estimator.prepare("gpt-4o-mini")
            await estimator.prepare("gpt-4")
            await estimator.prepare("text-davinci-001")  # r50k_base: not shipped
            assert estimator.encoding_name("gpt-4o-mini") == "o200k_base"
            assert estimator.encoding_name("gpt-4") == "cl100k_base"
            assert estimator.encoding_name("text-davinci-001") is None
            assert "TIKTOKEN_CACHE_DIR" not in os.environ
            return estimator.count_text("gpt-4o-mini", "hello world, the quick brown fox")

        counts = [anyio.run(main, backend=backend) for backend in ("asyncio", "trio")]
        assert attempts == [], attempts
        # tiktoken's own loader, pointed at the same files, agrees
        import tiktoken
        from maxllm_gate.tokens import _litellm_tokenizers_dir
        os.environ["TIKTOKEN_CACHE_DIR"] = _litellm_tokenizers_dir()
        text = "hello world, the quick brown fox"
        assert counts == [len(tiktoken.get_encoding("o200k_base").encode(text))] * 2, counts

        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.anyio
async def test_prepare_in_process_with_sockets_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[Any] = []

    def offline(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    estimator = TokenEstimator()
    await estimator.prepare("gpt-4o-mini")
    await estimator.prepare("text-davinci-001")  # r50k_base: not shipped, so not fetched
    assert estimator.encoding_name("gpt-4o-mini") == "o200k_base"
    assert estimator.encoding_name("text-davinci-001") is None
    assert attempts == []


@pytest.mark.anyio
async def test_prepare_is_concurrent_safe_and_loads_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = spy(monkeypatch, "_load_encoding", delay=0.05)
    lookups = spy(monkeypatch, "_encoding_name_for")
    estimator = TokenEstimator()
    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(estimator.prepare, "gpt-4o-mini")
            tg.start_soon(estimator.prepare, "gpt-4o")  # same encoding, other model
    assert loads == ["o200k_base"]
    assert sorted(lookups) == ["gpt-4o", "gpt-4o-mini"]
    assert estimator.encoding_name("gpt-4o") == estimator.encoding_name("gpt-4o-mini")

    await estimator.prepare("gpt-4o-mini")  # idempotent: a no-op now
    assert loads == ["o200k_base"]
    assert sorted(lookups) == ["gpt-4o", "gpt-4o-mini"]


@pytest.mark.anyio
async def test_an_encoding_loaded_once_serves_every_estimator_with_no_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = TokenEstimator()
    await first.prepare("gpt-4o-mini")

    def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a worker thread was started")

    monkeypatch.setattr(anyio.to_thread, "run_sync", no_thread)
    second = TokenEstimator(buffer=1.0)
    await second.prepare("gpt-4o-mini")
    assert second.encoding_name("gpt-4o-mini") == "o200k_base"
    assert second.count_prompt("gpt-4o-mini", MESSAGES) == tiktoken_raw("o200k_base", MESSAGES)


@pytest.mark.anyio
async def test_prepare_of_an_unknown_model_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    lookups = spy(monkeypatch, "_encoding_name_for")
    estimator = TokenEstimator()
    for _ in range(3):
        await estimator.prepare("gpt-unreleased")  # looks like OpenAI, unknown to tiktoken
    assert lookups == ["gpt-unreleased"]
    assert estimator.encoding_name("gpt-unreleased") is None


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["sim-model", "llama-3.1-70b-versatile", "groq/mixtral-8x7b"])
async def test_non_openai_models_need_no_thread(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups = spy(monkeypatch, "_encoding_name_for")
    loads = spy(monkeypatch, "_load_encoding")
    estimator = TokenEstimator()
    await estimator.prepare(model)
    assert lookups == loads == []
    assert estimator.encoding_name(model) is None


def test_the_prefix_filter_lets_every_tiktoken_model_through() -> None:
    import tiktoken.model

    names = [*tiktoken.model.MODEL_TO_ENCODING, *tiktoken.model.MODEL_PREFIX_TO_ENCODING]
    assert [name for name in names if not tokens._maybe_openai(name)] == []


@pytest.mark.anyio
@pytest.mark.parametrize("failing", ["_encoding_name_for", "_load_encoding"])
async def test_prepare_never_raises(failing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def broken(arg: str) -> Any:
        calls.append(arg)
        raise RuntimeError("boom")

    monkeypatch.setattr(tokens, failing, broken)
    estimator = TokenEstimator(buffer=1.0)
    await estimator.prepare("gpt-4o-mini")
    await estimator.prepare("gpt-4o-mini")  # the failure is remembered, not retried
    assert len(calls) == 1
    assert estimator.encoding_name("gpt-4o-mini") is None
    assert estimator.estimate_prompt("gpt-4o-mini", MESSAGES) == heuristic_raw(MESSAGES)


@pytest.mark.anyio
async def test_a_cancelled_prepare_keeps_the_loaded_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads = spy(monkeypatch, "_load_encoding", delay=0.2)
    estimator = TokenEstimator()
    with anyio.move_on_after(0.01) as scope:
        await estimator.prepare("gpt-4o-mini")
    assert scope.cancelled_caught
    await estimator.prepare("gpt-4o-mini")
    assert loads == ["o200k_base"]  # the load finished in its thread and was kept
    assert estimator.encoding_name("gpt-4o-mini") == "o200k_base"


# --- the offline vocabulary files ----------------------------------------------------------


def test_encoding_table_matches_tiktoken() -> None:
    import tiktoken.model

    spec = importlib.util.find_spec("tiktoken_ext.openai_public")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    for files in tokens._ENCODING_FILES.values():
        for url, sha256 in files:
            assert f'"{url}"' in source
            assert f'"{sha256}"' in source
    used = set(tiktoken.model.MODEL_TO_ENCODING.values())
    used |= set(tiktoken.model.MODEL_PREFIX_TO_ENCODING.values())
    assert used <= set(tokens._ENCODING_FILES)


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base", "p50k_base"])
def test_litellm_ships_the_main_vocabularies(encoding: str) -> None:
    folder = tokens._litellm_tokenizers_dir()
    assert folder is not None
    files = tokens._ENCODING_FILES[encoding]
    assert all(tokens._cached_file(folder, url, sha256) is not None for url, sha256 in files)


def test_import_is_cheap() -> None:
    result = run_python(
        """
        import sys
        import maxllm_gate.tokens
        assert "tiktoken" not in sys.modules, "tiktoken imported"
        assert "litellm" not in sys.modules, "litellm imported"
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
