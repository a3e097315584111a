"""Token estimates for admission: offline, and never blocking the event loop.

The scheduler must know what a request will cost before it sends it. `TokenEstimator`
counts a chat prompt with the model's tiktoken encoding when one is ready, and with a
chars/4 heuristic otherwise, then adds the configured safety buffer.

tiktoken fetches its vocabularies over the network the first time, which blocks, and
fails offline (0.8.0 spent 20 s in DNS lookups inside the event loop). So:

* encodings are loaded only by `TokenEstimator.prepare`, in a worker thread, once;
* the vocabulary files are read from disk by explicit path: the folder the user gave
  tiktoken (``TIKTOKEN_CACHE_DIR``), else the files LiteLLM ships (found without
  importing LiteLLM); an encoding whose files are not on disk, intact, is never
  loaded, and the process's environment is left as it was;
* `TokenEstimator.estimate_prompt` is synchronous and only uses what is ready.

``import maxllm_gate.tokens`` imports neither tiktoken nor LiteLLM.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import math
import os
import tempfile
import types
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from maxllm_gate.errors import ConfigError

if TYPE_CHECKING:
    import tiktoken

    from maxllm_gate.validation import ChatMessage

__all__ = ["IMAGE_TOKENS", "TokenEstimator", "heuristic_tokens", "to_json"]

# OpenAI's chat recipe: every message costs 3 tokens of framing, a name 1 more, and the
# reply is primed with 3.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
# A high-detail 1024x1024 image on gpt-4o costs 765 tokens; we can't see the image, so
# every image part is charged that much.
IMAGE_TOKENS = 765
_IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image"})

_BLOB = "https://openaipublic.blob.core.windows.net/"
# The files each encoding reads, with their sha256, as in tiktoken_ext/openai_public.py
# (tests/test_tokens.py checks this table against the installed tiktoken). An encoding
# missing here is never loaded: we could not prove it needs no download.
_ENCODING_FILES: dict[str, tuple[tuple[str, str], ...]] = {
    "r50k_base": (
        (
            _BLOB + "encodings/r50k_base.tiktoken",
            "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
        ),
    ),
    "p50k_base": (
        (
            _BLOB + "encodings/p50k_base.tiktoken",
            "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
        ),
    ),
    "cl100k_base": (
        (
            _BLOB + "encodings/cl100k_base.tiktoken",
            "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        ),
    ),
    "o200k_base": (
        (
            _BLOB + "encodings/o200k_base.tiktoken",
            "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        ),
    ),
    "gpt2": (
        (
            _BLOB + "gpt-2/encodings/main/vocab.bpe",
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        ),
        (
            _BLOB + "gpt-2/encodings/main/encoder.json",
            "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        ),
    ),
}
_ENCODING_FILES["p50k_edit"] = _ENCODING_FILES["p50k_base"]
_ENCODING_FILES["o200k_harmony"] = _ENCODING_FILES["o200k_base"]

_T = TypeVar("_T")

# Encodings any estimator loaded, by model: tiktoken's encodings never change, so every
# estimator in the process shares them. A client made after another needs no worker
# thread then, whose hop would also let a virtual clock jump past waiting requests.
_loaded: dict[str, tiktoken.Encoding] = {}


def heuristic_tokens(text: str) -> int:
    """About one token per four characters, rounded up (0 for "").

    The fallback for models with no known tokenizer, and before an encoding is ready.
    """
    return (len(text) + 3) // 4


def _log_debug(event: str, **fields: Any) -> None:
    try:
        from maxllm_gate._logging import get_logger

        get_logger(__name__).debug(event, **fields)
    except Exception:  # a log line must never turn a fallback into a failure
        pass


def _litellm_tokenizers_dir() -> str | None:
    """The folder of vocabulary files inside the installed LiteLLM, found without import."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = os.path.join(root, "litellm_core_utils", "tokenizers")
        if os.path.isdir(folder):
            return folder
    return None


def _cache_dirs() -> list[str]:
    """Where to look for vocabulary files, in order; read only, never changed.

    The folder the user gave tiktoken, the files LiteLLM ships, then tiktoken's default.
    """
    folders = [os.environ.get(name) for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")]
    folders += [_litellm_tokenizers_dir(), os.path.join(tempfile.gettempdir(), "data-gym-cache")]
    return [folder for folder in folders if folder]


def _cache_path(cache_dir: str, url: str) -> str:
    """Where tiktoken caches the file downloaded from ``url``: named by the URL's sha1."""
    return os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())


def _cached_file(cache_dir: str, url: str, sha256: str) -> bytes | None:
    """The contents of ``url``'s cached file in ``cache_dir``, if present and intact."""
    try:
        with open(_cache_path(cache_dir, url), "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


def _local_vocabulary(encoding: str) -> dict[str, bytes] | None:
    """url -> contents of every file of ``encoding``, from the first folder holding all."""
    files = _ENCODING_FILES.get(encoding, ())
    for cache_dir in _cache_dirs() if files else []:
        found = {url: _cached_file(cache_dir, url, sha256) for url, sha256 in files}
        if all(data is not None for data in found.values()):
            return {url: data for url, data in found.items() if data is not None}
    return None


def _bpe_ranks(contents: bytes) -> dict[bytes, int]:
    """A ``.tiktoken`` file's ranks: one ``base64(token) rank`` pair per line."""
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in contents.splitlines() if line)
    }


def _load_encoding(name: str) -> tiktoken.Encoding | None:
    """Load encoding ``name`` from files on disk, or None. Runs in a worker thread.

    Never touches the network, nor the environment. tiktoken's own constructor
    (`tiktoken_ext.openai_public`) supplies the pattern and special tokens; it runs
    as a copy whose ``load_tiktoken_bpe`` reads the files found here, so tiktoken's
    loader, which reads ``TIKTOKEN_CACHE_DIR`` and may download, is never called.
    """
    vocabulary = _local_vocabulary(name)
    if vocabulary is None:
        _log_debug("tokens.encoding_not_cached", encoding=name, searched=_cache_dirs())
        return None
    import tiktoken
    import tiktoken_ext.openai_public as public  # type: ignore[import-untyped]

    def load_tiktoken_bpe(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        return _bpe_ranks(vocabulary[url])  # KeyError: a file the table doesn't know

    def refuse(*args: object, **kwargs: object) -> Any:
        raise KeyError("a vocabulary maxllm_gate does not load offline")

    namespace = {
        **public.__dict__,
        "load_tiktoken_bpe": load_tiktoken_bpe,
        "data_gym_to_mergeable_bpe_ranks": refuse,
    }
    for constructor in public.ENCODING_CONSTRUCTORS.values():
        namespace[constructor.__name__] = types.FunctionType(constructor.__code__, namespace)
    try:
        return tiktoken.Encoding(**namespace[name]())
    except KeyError:
        return None


def _strip_provider(model: str) -> str:
    """Drop a provider prefix ("openai/gpt-4o" -> "gpt-4o"): tiktoken knows bare names."""
    return model.rsplit("/", 1)[-1]


# Every model name tiktoken knows starts with one of these (tests/test_tokens.py checks it
# against tiktoken's tables). Any other name goes to the heuristic at once, with no worker
# thread: a thread would also make trio's autojump clock jump in virtual-time tests.
# fmt: off
_OPENAI_PREFIXES = (
    "gpt", "o1", "o3", "o4", "chatgpt", "text-", "davinci", "babbage", "curie", "ada",
    "cushman", "code-", "ft:", "omni",
)
# fmt: on


def _maybe_openai(model: str) -> bool:
    """False when tiktoken surely doesn't know ``model`` (cheap, no import)."""
    return _strip_provider(model).lower().startswith(_OPENAI_PREFIXES)


def _encoding_name_for(model: str) -> str | None:
    """The tiktoken encoding name of ``model``, or None if tiktoken doesn't know it.

    Runs in a worker thread: the first call imports tiktoken.
    """
    import tiktoken.model

    try:
        return tiktoken.model.encoding_name_for_model(_strip_provider(model))
    except KeyError:
        return None


class TokenEstimator:
    """Counts the tokens of chat prompts, offline and without blocking.

    `prepare` (async) makes a model's encoding ready; `estimate_prompt` and `count_text`
    (sync, fast) use it when ready and the chars/4 heuristic otherwise.

    Args:
      buffer: the factor `estimate_prompt` multiplies the raw count by (1.1 = +10%).

    Raises:
      ConfigError: (a ValueError) ``buffer`` is not a positive finite number.
    """

    __slots__ = ("_buffer", "_by_model", "_encodings", "_inflight", "_names")

    def __init__(self, buffer: float = 1.1) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, (int, float)):
            raise ConfigError(f"buffer: must be a number, got {type(buffer).__name__}")
        if not (math.isfinite(buffer) and buffer > 0):
            raise ConfigError(f"buffer: must be a positive finite number, got {buffer}")
        self._buffer = float(buffer)
        # model -> its encoding, or None once known unavailable (heuristic). The only state
        # the hot path reads: one dict lookup.
        self._by_model: dict[str, tiktoken.Encoding | None] = {}
        self._names: dict[str, str | None] = {}  # model -> encoding name (None: unknown)
        self._encodings: dict[str, tiktoken.Encoding | None] = {}  # name -> loaded or None
        self._inflight: dict[tuple[str, str], anyio.Event] = {}  # work running in a thread

    @property
    def buffer(self) -> float:
        """The safety factor applied by `estimate_prompt`."""
        return self._buffer

    def encoding_name(self, model: str) -> str | None:
        """The name of the encoding used for ``model``, or None while it uses the heuristic."""
        encoding = self._by_model.get(model)
        return None if encoding is None else encoding.name

    async def prepare(self, model: str) -> None:
        """Make ``model``'s encoding ready, loading it in a worker thread the first time.

        Concurrent calls share one load per encoding, and every estimator in the
        process shares the encodings loaded (a model another estimator prepared is
        ready at once, with no thread). A fast no-op once the model is ready or known
        to have no usable encoding (unknown model, vocabulary not cached locally, any
        error): that model then keeps using the heuristic, in this estimator.

        Never raises, except on cancellation: a cancelled call raises the backend's
        cancellation exception; a load already running in its thread still completes
        and is kept for the next caller.
        """
        if model in self._by_model:
            return
        shared = _loaded.get(model)
        if shared is not None:  # loaded by another estimator: no thread
            self._by_model[model] = shared
            return
        if not _maybe_openai(model):  # no tokenizer to load: no thread, no clock jump
            self._by_model[model] = None
            return
        encoding: tiktoken.Encoding | None = None
        try:
            name = await self._once("name", model, self._names, _encoding_name_for)
            if name is not None:
                encoding = await self._once("encoding", name, self._encodings, _load_encoding)
        except Exception as exc:  # never let estimation break a request
            _log_debug("tokens.prepare_failed", model=model, error=repr(exc))
        self._by_model[model] = encoding
        if encoding is not None:
            _loaded[model] = encoding
        await anyio.lowlevel.checkpoint_if_cancelled()

    async def _once(
        self,
        kind: str,
        key: str,
        done: dict[str, _T],
        work: Callable[[str], _T],
    ) -> _T:
        """``done[key]``, computing it with ``work(key)`` in a thread if it isn't there.

        Concurrent callers for the same key wait for the first one instead of repeating
        the work. Raises whatever ``work`` raised (then a waiter tries once more itself).
        """
        while key not in done:
            event = self._inflight.get((kind, key))
            if event is not None:
                await event.wait()
                continue
            event = self._inflight[kind, key] = anyio.Event()
            try:
                # A thread can't be stopped: run_sync (abandon_on_cancel=False) ignores a
                # cancellation until the work is done and returns its result, which we keep
                # rather than throw away a loaded vocabulary.
                done[key] = await anyio.to_thread.run_sync(work, key)
            finally:
                del self._inflight[kind, key]
                event.set()
            # Cancelled while the thread ran: stop here rather than start the next load.
            await anyio.lowlevel.checkpoint_if_cancelled()
        return done[key]

    def estimate_prompt(
        self, model: str, messages: Sequence[Mapping[str, Any] | ChatMessage], tools: Any = None
    ) -> int:
        """Tokens the prompt of a chat request will use, buffer included:
        ``ceil(count_prompt(...) * buffer)``."""
        return self.with_buffer(self.count_prompt(model, messages, tools))

    def with_buffer(self, tokens: int) -> int:
        """``tokens`` with the safety buffer applied, rounded up."""
        # round() strips float noise first: 10 * 1.1 must give 11, not 12.
        return math.ceil(round(tokens * self._buffer, 6))

    def count_prompt(
        self, model: str, messages: Sequence[Mapping[str, Any] | ChatMessage], tools: Any = None
    ) -> int:
        """Tokens the prompt of a chat request will use, without the buffer.

        The count follows OpenAI's recipe: 3 per message, plus
        each string field (role, content, name ...), plus 1 per name, plus 3 to prime the
        reply. Text parts are counted, each image part is charged `IMAGE_TOKENS`, and
        tool calls and the ``tools`` schemas are counted as their JSON.

        Uses the encoding if `prepare` finished for ``model``, else the heuristic; it
        never loads anything and never blocks. Never raises for odd message contents.
        """
        encoding = self._by_model.get(model)
        count: Callable[[str], int] = (
            heuristic_tokens if encoding is None else _ordinary_counter(encoding)
        )
        raw = REPLY_PRIMING
        for message in messages:
            if type(message) is not dict and not isinstance(message, Mapping):  # a ChatMessage
                message = message.to_dict()
            raw += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if value is None:
                    continue
                if isinstance(value, str):
                    raw += count(value)
                elif key == "content" and isinstance(value, (list, tuple)):
                    raw += _count_parts(value, count)
                else:  # tool_calls, function_call, or anything else we pass through
                    raw += count(to_json(value))
                if key == "name":
                    raw += TOKENS_PER_NAME
        if tools:
            raw += count(to_json(tools))
        return raw

    def count_text(self, model: str, text: str) -> int:
        """Tokens in plain ``text`` (no buffer), e.g. of a streamed completion.

        Same rule as `estimate_prompt`: the encoding if ready, else the heuristic.
        """
        encoding = self._by_model.get(model)
        if encoding is None:
            return heuristic_tokens(text)
        return len(encoding.encode_ordinary(text))


def _ordinary_counter(encoding: tiktoken.Encoding) -> Callable[[str], int]:
    # encode_ordinary: special-token text in a prompt ("<|endoftext|>") is counted as
    # plain text instead of raising, like the provider does.
    encode = encoding.encode_ordinary
    return lambda text: len(encode(text))


def _count_parts(parts: Sequence[Any], count: Callable[[str], int]) -> int:
    total = 0
    for part in parts:
        if isinstance(part, str):
            total += count(part)
        elif not isinstance(part, Mapping):
            total += count(to_json(part))
        elif part.get("type") == "text" and isinstance(part.get("text"), str):
            total += count(part["text"])
        elif part.get("type") in _IMAGE_PART_TYPES:
            total += IMAGE_TOKENS
        else:  # audio, files, future kinds: their JSON is a generous upper bound
            total += count(to_json(part))
    return total


def to_json(value: Any) -> str:
    """Compact JSON for counting; anything not JSON-able is counted by its str()."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # e.g. circular references
        return str(value)
