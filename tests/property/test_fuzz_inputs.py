"""Fuzzed configuration and requests: every input is accepted or refused with the
library's own error (a `GateError`); nothing else escapes, and nothing hangs.

The values are JSON-like (what a config file, an environment variable or an HTTP
body can hold) plus what Python callers pass by mistake (bytes, NaN, sets).
"""

from __future__ import annotations

import json
from typing import Any

import trio
import trio.testing
from hypothesis import event, given, settings
from hypothesis import strategies as st

from maxllm_gate import GateError, KeyConfig, SimulatedProvider, maxllm_gate
from maxllm_gate.config import ENV_VARS, config_from_env, maxllm_gate_config, parse_keys_config
from maxllm_gate.tokens import TokenEstimator
from maxllm_gate.validation import validate_chat_request

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_like = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
odd = st.one_of(json_like, st.binary(max_size=8), st.frozensets(st.integers(), max_size=2))


def mostly(
    good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] = odd
) -> st.SearchStrategy[Any]:
    """Plausible values nine times in ten, anything at all otherwise."""
    return st.integers(0, 9).flatmap(lambda draw: bad if draw == 0 else good)


_hashable = st.one_of(st.text(max_size=10), st.integers(), st.none(), st.booleans())


def _sometimes(
    names: list[str], values: st.SearchStrategy[Any], most: int | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts over the real field names (and, rarely, a stray one), each value fuzzed."""
    name = mostly(st.sampled_from(names), st.just("no_such_field"))
    return st.dictionaries(name, values, max_size=most or len(names))


_LIMIT_FIELDS = ["tpm_limit", "rpm_limit", "burst_seconds", "max_concurrency", "token_accounting"]
_limits = st.one_of(
    st.fixed_dictionaries(
        {"tpm_limit": mostly(st.integers(1, 10**6)), "rpm_limit": mostly(st.integers(1, 10**4))},
        optional={
            "burst_seconds": mostly(st.floats(0.01, 60.0)),
            "max_concurrency": mostly(st.integers(1, 100)),
            "token_accounting": mostly(st.sampled_from(["admission", "usage"])),
        },
    ),
    _sometimes(_LIMIT_FIELDS, odd),
)
_models = mostly(
    st.dictionaries(
        mostly(st.sampled_from(["sim-model", "gpt-4o-mini"]), _hashable),
        _limits,
        min_size=1,
        max_size=3,
    )
)
_KEY_FIELDS = ["api_key", "provider", "models", "key_id", "api_base", "transport"]
_key = st.one_of(
    st.fixed_dictionaries(
        {
            "api_key": mostly(st.text(min_size=1, max_size=20)),
            "provider": mostly(st.sampled_from(["openai", "groq", "anthropic"])),
            "models": _models,
        },
        optional={
            "key_id": mostly(st.text(min_size=1, max_size=10)),
            "api_base": mostly(st.just("http://127.0.0.1:9/v1")),
            "transport": mostly(st.sampled_from(["litellm", "openai_compat"])),
        },
    ),
    _sometimes(_KEY_FIELDS, odd),
)
_CONFIG_FIELDS = [attr.name for attr in maxllm_gate_config.__attrs_attrs__]  # type: ignore[attr-defined]
_setting = mostly(
    st.one_of(
        st.integers(-2, 100),
        st.floats(-1.0, 120.0),
        st.booleans(),
        st.none(),
        st.sampled_from(
            [
                *["least_utilized", "round_robin", "balanced", "high", "low", "INFO", "debug"],
                *["litellm", "openai_compat", "redis://127.0.0.1:9/0", "0.0.0.0"],
            ]
        ),
    )
)


def refused_cleanly(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Call it; a GateError is a clean refusal, anything else fails the test."""
    try:
        result = call(*args, **kwargs)
    except GateError as exc:
        event(f"refused: {type(exc).__name__}")
        return None
    event("accepted")
    return result


@given(
    st.lists(_key, max_size=3), _sometimes([n for n in _CONFIG_FIELDS if n != "keys"], _setting, 3)
)
def test_a_fuzzed_config_is_accepted_or_refused_with_a_config_error(
    keys: list[Any], settings_: dict[str, Any]
) -> None:
    # Through evolve(), as the client applies its keyword settings: an unknown name is
    # a ConfigError there too (the bare attrs constructor raises TypeError, as Python does).
    config = refused_cleanly(maxllm_gate_config().evolve, keys=keys, **settings_)
    if config is not None:
        # What the config accepted, the client accepts (or refuses the same way).
        refused_cleanly(maxllm_gate, config, provider=SimulatedProvider())


@given(_key)
def test_a_fuzzed_key_is_accepted_or_refused_with_a_config_error(fields: dict[str, Any]) -> None:
    client = refused_cleanly(maxllm_gate, keys=[fields], provider=SimulatedProvider())
    if client is not None:
        assert "'<redacted>'" in repr(client.config.keys[0])


@given(
    st.dictionaries(
        st.sampled_from(sorted(ENV_VARS)),
        st.one_of(st.text(max_size=30), json_like.map(json.dumps)),
        max_size=6,
    )
)
def test_a_fuzzed_environment_is_accepted_or_refused_with_a_config_error(
    environ: dict[str, str],
) -> None:
    refused_cleanly(config_from_env, environ, dotenv_path=None)


@given(st.one_of(st.text(max_size=40), json_like.map(json.dumps), json_like))
def test_a_fuzzed_api_keys_config_is_accepted_or_refused_with_a_config_error(value: Any) -> None:
    refused_cleanly(parse_keys_config, value)


_role = mostly(st.sampled_from(["system", "user", "assistant", "developer"]))
_text = mostly(st.text(min_size=1, max_size=40).filter(str.strip))
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
    st.fixed_dictionaries(
        {"type": st.just("image_url"), "image_url": mostly(st.just({"url": "https://x/y.png"}))}
    ),
    st.dictionaries(st.text(max_size=8), odd, max_size=3),
)
_message = mostly(
    st.fixed_dictionaries(
        {
            "role": _role,
            "content": st.one_of(_text, _text, st.lists(_part, min_size=1, max_size=3)),
        },
        optional={"name": mostly(st.from_regex(r"[a-z_]{1,10}", fullmatch=True))},
    )
)
_messages = mostly(st.one_of(_text, st.lists(_message, min_size=1, max_size=4)))
_request = st.fixed_dictionaries(
    {"model": mostly(st.just("sim-model")), "messages": _messages},
    optional={
        "temperature": mostly(st.floats(0.0, 2.0)),
        "max_tokens": mostly(st.integers(1, 100)),
        "priority": mostly(st.sampled_from(["high", "medium", "low"])),
        "tools": mostly(
            st.just([{"type": "function", "function": {"name": "f", "parameters": {}}}])
        ),
        "top_p": mostly(st.floats(0.0, 1.0)),
        "stop": mostly(st.text(min_size=1, max_size=5)),
    },
)


@given(_request)
def test_a_fuzzed_request_is_accepted_or_refused_with_a_validation_error(
    request: dict[str, Any],
) -> None:
    accepted = refused_cleanly(validate_chat_request, **request)
    if accepted is not None:
        # What validation accepts can be priced: the client counts it next.
        estimator = TokenEstimator()
        wire = accepted.message_dicts()
        assert estimator.count_prompt(accepted.model, wire, accepted.extra.get("tools")) >= 0


@settings(max_examples=150)
@given(st.lists(_request, min_size=1, max_size=4))
def test_fuzzed_chat_calls_end_in_an_answer_or_a_gate_error_and_never_hang(
    requests: list[dict[str, Any]],
) -> None:
    key = KeyConfig(
        api_key="sk-fuzz-0000",
        provider="openai",
        key_id="fuzz",
        models={"sim-model": {"rpm_limit": 60, "tpm_limit": 10_000}},
    )

    async def body() -> None:
        async with maxllm_gate(keys=[key], provider=SimulatedProvider(latency=0.1)) as client:
            for request in requests:
                with trio.fail_after(3600):  # virtual time: only a real hang trips it
                    fields = dict(request)
                    answer = await _chat(client, fields)
                if answer is not None:
                    assert answer.key_used == "fuzz"

    trio.run(body, clock=trio.testing.MockClock(autojump_threshold=0))


async def _chat(client: maxllm_gate, fields: dict[str, Any]) -> Any:
    model, messages = fields.pop("model"), fields.pop("messages")
    try:
        answer = await client.chat(model, messages, **fields)
    except GateError as exc:
        event(f"chat refused: {type(exc).__name__}")
        return None
    event("chat answered")
    return answer
